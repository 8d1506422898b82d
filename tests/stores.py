"""Store fixtures, parametrized over both backends: SQLite and PostgreSQL.

``url`` is an empty database, ``store`` an open :class:`Store` on it after
migrating; ``new_url`` makes more empty databases on the same backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from overcast.store import Store, migrate
from pg import fresh_database

__all__ = ["new_url", "store", "url"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def new_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Makes URLs of new, empty databases on the parametrized backend."""
    counter = iter(range(1000))
    if request.param == "sqlite":
        return lambda: f"sqlite:///{tmp_path}/s{next(counter)}.db"
    pg_url: str = request.getfixturevalue("pg_url")
    return lambda: fresh_database(pg_url)


@pytest.fixture
def url(new_url: Callable[[], str]) -> str:
    return new_url()


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    migrate(url)
    s = Store(url)
    try:
        yield s
    finally:
        await s.close()
