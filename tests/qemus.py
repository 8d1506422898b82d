"""Finding the QEMU processes a test started, from the process table."""

from __future__ import annotations

from pathlib import Path

__all__ = ["qemus_in"]


def qemus_in(path: Path) -> list[int]:
    """Live (not zombie) QEMU processes whose command line mentions ``path``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"qemu-system" in argv and str(path).encode() in argv and state != "Z":
            found.append(int(proc.name))
    return found
