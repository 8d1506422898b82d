"""The QEMU process outside QMP: spawned to its daemon, found again, watched.

QEMU runs with ``-daemonize``: its first process forks the real one (the
daemon) and exits once the daemon is set up, with status 0 or with QEMU's
refusal. The daemon is nobody's child of ours, so it outlives overcast; we
find it by the pidfile in its run directory and watch it through a pidfd,
which becomes readable the moment it ends, whoever reaps it (on machines
where PID 1 reaps orphans only every few seconds, that matters).

Not here: QMP (``overcast.hypervisor.qemu``), the command line
(``overcast.hypervisor.argv``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import select
import signal
from pathlib import Path

from overcast.hypervisor.argv import RunFiles, describe, qmp_chardev
from overcast.model.errors import FailedError

__all__ = ["cmdline", "find_qemu", "kill_and_wait", "refusal", "spawn", "wait_ended"]

log = logging.getLogger(__name__)


async def spawn(argv: list[str], files: RunFiles, limit: float) -> None:
    """Run QEMU until it has daemonized (its pidfile is written), or raise its refusal.

    ``limit`` is the seconds QEMU may take. Killing its first process
    half-way would leave a daemon that has not written its pidfile yet, one
    we could not find; so a cancelled or timed-out spawn still lets it finish
    (within ``limit`` more), and the caller then kills the daemon by its
    pidfile (:func:`find_qemu`).
    """
    for path in files.all:
        path.unlink(missing_ok=True)
    log.debug("spawning %s", describe(argv))
    run = asyncio.ensure_future(_run_to_daemon(argv))
    try:
        async with asyncio.timeout(limit):
            status, stderr = await asyncio.shield(run)
    except BaseException as err:
        if not run.done():
            await asyncio.wait({run}, timeout=limit)
        if not run.done():
            run.cancel()  # hung: kill the first process after all
            await asyncio.wait({run})
        elif not run.cancelled():
            run.exception()  # seen; what we raise is why we left
        if isinstance(err, TimeoutError):
            raise FailedError(f"QEMU did not start within {limit} s") from err
        raise
    if status != 0:
        # With -D, QEMU sends its errors to that log even before it daemonizes.
        text = stderr.decode(errors="replace") + _read_text(files.log)
        log.warning("QEMU refused to start (status %s): %s", status, text.strip())
        raise FailedError(f"QEMU refused to start: {refusal(text)}")


async def _run_to_daemon(argv: list[str]) -> tuple[int, bytes]:
    """Run QEMU's first process to its end; its exit status and stderr."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError as err:
        raise FailedError(f"{argv[0]} is not installed") from err
    try:
        _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, stderr


def find_qemu(files: RunFiles) -> tuple[int, int] | None:
    """``(pid, pidfd)`` of the live QEMU of this run directory, or None.

    The pidfd is opened before the command line is checked (it must be a
    QEMU serving this directory's QMP socket) and tested for an exit after,
    so it cannot refer to a newer process that reused a stale pid.
    """
    try:
        pid = int(files.pidfile.read_text().strip())
        pidfd = os.pidfd_open(pid)
    except (OSError, ValueError):
        return None
    argv = cmdline(pid)
    ours = bool(argv) and "qemu-system" in Path(argv[0]).name and qmp_chardev(files) in argv
    if ours and not _ended(pidfd):
        return pid, pidfd
    os.close(pidfd)
    return None


def cmdline(pid: int) -> list[str]:
    """The arguments of process ``pid`` (empty if it is gone or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


def _ended(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])


async def wait_ended(pidfd: int) -> None:
    """Wait until the process of ``pidfd`` has ended."""
    if _ended(pidfd):
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, ready)
    try:
        await done
    finally:
        loop.remove_reader(pidfd)


async def kill_and_wait(pidfd: int) -> None:
    """SIGKILL the process of ``pidfd`` and wait for its end."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    await wait_ended(pidfd)


def refusal(stderr: str) -> str:
    """QEMU's start-up error as one line: without the program name, the timestamp
    and the echo of our own option, but naming the device it was about."""
    lines = []
    for raw in stderr.splitlines():
        line = _PREFIX.sub("", raw.strip())
        echo = _ECHO.match(line)
        if echo:
            option, line = echo.group(1), echo.group(2)
            with contextlib.suppress(ValueError):
                device = json.loads(option)
                if isinstance(device, dict) and ("id" in device or "node-name" in device):
                    line = f"{device.get('id') or device['node-name']}: {line}"
        if line:
            lines.append(line)
    return "; ".join(lines) or "no message"


_PREFIX = re.compile(r"^(\S+Z )?\S*qemu-system-\S+?: ")
_ECHO = re.compile(r"^-[a-z-]+ (\{.*\}|\S+): (.*)$")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
