"""What every route module shares: the method rules and the running cloud.

Reads answer GET and POST (the official tools POST everything); calls that
change state answer POST only, so a GET on them is ``405 method``.
"""

from __future__ import annotations

from starlette.requests import Request

from overcast.cluster.cloud import Cloud

__all__ = ["CHANGE", "READ", "cloud_of"]

READ = ["GET", "POST"]
CHANGE = ["POST"]


def cloud_of(request: Request) -> Cloud:
    """The cloud the app's lifespan opened."""
    cloud: Cloud = request.app.state.cloud
    return cloud
