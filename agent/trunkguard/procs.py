"""Running external programs: argv only (never a shell), one way for every caller.

Programs get exactly the environment passed in (never the daemon's own, which may
hold secrets), stdin from /dev/null, and their own process group so that a timeout,
an output overflow or a cancellation kills everything they started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Literal

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
STDERR_TAIL = 8192  # bytes of stderr kept for the error message
STDOUT_MAX = 64 * 1024  # captured stdout beyond this is an error, not a truncation
ERROR_LINE_MAX = 200
DRAIN_AFTER_EXIT = 0.5  # a daemonised grandchild may keep a pipe open

Reason = Literal["spawn", "timeout", "exit", "output"]


class ProgramError(Exception):
    """A program could not be run to a clean exit.

    `reason` is stable ("spawn", "timeout", "exit", "output"); the message is one
    line and starts with argv[0].
    """

    def __init__(self, reason: Reason, message: str) -> None:
        message = " ".join(message.split())  # may quote program output
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message


async def run_program(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str],
    capture: bool = False,
    max_output: int = STDOUT_MAX,
) -> bytes:
    """Run `argv` to completion within `timeout` seconds; its stdout when `capture`.

    Raises ProgramError; on cancellation the program's group is killed and reaped
    before the CancelledError propagates.
    """
    if not argv:
        raise ProgramError("spawn", "empty argv")
    what = argv[0]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            start_new_session=True,  # own process group: killable as a whole
        )
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in argv
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise ProgramError("spawn", f"{what}: cannot start: {reason}") from e
    assert proc.stderr is not None
    tail, out = bytearray(), bytearray()
    overflow = False

    async def read_out(stream: asyncio.StreamReader) -> None:
        nonlocal overflow
        while chunk := await stream.read(65536):
            if overflow:
                # Keep draining: proc.wait() returns only once every pipe is closed.
                continue
            out.extend(chunk)
            if len(out) > max_output:
                overflow = True  # stop it now rather than at the deadline
                out.clear()
                if proc.returncode is None:
                    _kill_group(proc.pid)

    readers = [asyncio.create_task(_read_tail(proc.stderr, tail))]
    if proc.stdout is not None:
        readers.append(asyncio.create_task(read_out(proc.stdout)))
    try:
        try:
            # On Python 3.11 wait() also waits for the pipes to close, so a grandchild
            # holding one runs into the timeout, and killpg takes it down too.
            async with asyncio.timeout(timeout):
                code = await proc.wait()
        except TimeoutError:
            _kill_group(proc.pid)
            raise ProgramError("timeout", f"{what}: killed after {timeout:g}s") from None
        # Stop reading soon even if a background child still holds a pipe.
        _, unread = await asyncio.wait(readers, timeout=DRAIN_AFTER_EXIT)
    finally:
        if proc.returncode is None:  # cancelled or timed out: leave nothing behind
            _kill_group(proc.pid)
            await asyncio.shield(proc.wait())
        for r in readers:
            r.cancel()
        for r in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await r
    if overflow:
        raise ProgramError("output", f"{what}: output exceeds {max_output} bytes")
    if code != 0:
        how = f"exited with {code}" if code > 0 else f"killed by signal {-code}"
        line = _last_line(bytes(tail))
        raise ProgramError("exit", f"{what}: {how}" + (f": {line}" if line else ""))
    if capture and len(readers) > 1 and readers[1] in unread:
        # Whatever we return could be cut short: better no value than a wrong one.
        raise ProgramError("output", f"{what}: stdout still open after exit")
    return bytes(out)


async def _read_tail(stream: asyncio.StreamReader, tail: bytearray) -> None:
    while chunk := await stream.read(4096):
        tail += chunk
        del tail[:-STDERR_TAIL]


def _last_line(data: bytes) -> str:
    for raw in reversed(data.splitlines()):
        line = raw.decode("utf-8", "replace").strip()
        if line:
            return line[:ERROR_LINE_MAX]
    return ""


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
