"""Small conversions shared by the store's tables."""

from __future__ import annotations

import time

__all__ = ["join_words", "now", "split_words"]


def split_words(text: str | None) -> tuple[str, ...]:
    return tuple(text.split()) if text else ()


def join_words(words: tuple[str, ...]) -> str:
    return " ".join(words)


def now() -> float:
    return time.time()
