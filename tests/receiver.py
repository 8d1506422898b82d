"""A scripted HTTP receiver on 127.0.0.1 for callback tests.

``http.server`` in a thread: per path, a list of answers consumed one per
request (an int status, or "hang"), then 200 for ever. Every request is
recorded with its headers, body, answer and arrival time.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

__all__ = ["Hit", "Receiver", "receiver", "serve_receiver"]


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None
    at: float


@dataclass
class Receiver:
    """Scripted answers per path: a list consumed one per request (an int
    status, or "hang"), then 200 for ever."""

    base: str = ""
    script: dict[str, list[int | str]] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str) -> int | str:
        with self.lock:
            steps = self.script.get(path)
            return steps.pop(0) if steps else 200

    def wait_acknowledged(
        self, path: str, count: int, within: float = 20.0
    ) -> list[dict[str, object]]:
        """Block until ``count`` requests to ``path`` were answered 2xx."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            got = self.acknowledged(path)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{path}: {len(self.acknowledged(path))} of {count} acknowledged")

    def acknowledged(self, path: str) -> list[dict[str, object]]:
        with self.lock:
            return [
                json.loads(h.body)
                for h in self.hits
                if h.path == path and h.status is not None and 200 <= h.status < 300
            ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as rec:
        yield rec


@contextlib.contextmanager
def serve_receiver() -> Iterator[Receiver]:
    """A receiver of its own (another port: another receiver to the sender)."""
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            answer = rec.answer(self.path)
            hit = Hit(self.path, dict(self.headers.items()), body, None, time.monotonic())
            with rec.lock:
                rec.hits.append(hit)
            if answer == "hang":
                rec.release.wait(10)
                return
            assert isinstance(answer, int)
            hit.status = answer
            self.send_response(answer)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
