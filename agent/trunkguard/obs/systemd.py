"""sd_notify(3) without libsystemd: readiness, status, reload and watchdog pings."""

from __future__ import annotations

import asyncio
import os
import socket
import time


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        return "\0" + addr[1:]  # abstract namespace
    if addr.startswith("/"):
        return addr
    return None  # unset, or a transport we do not speak (vsock)


def notify(message: str) -> bool:
    """Send one notification; False when not under systemd or the send failed."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Non-blocking: a stuck manager must never stall the event loop.
            sock.setblocking(False)
            sock.connect(addr)
            sock.send(message.encode())
    except OSError:
        return False
    return True


def _one_line(text: str) -> str:
    # A newline would let the text inject further KEY=VALUE assignments.
    return " ".join(text.splitlines())


def ready(status: str = "") -> bool:
    return notify(f"READY=1\nSTATUS={_one_line(status)}" if status else "READY=1")


def stopping() -> bool:
    return notify("STOPPING=1")


def reloading() -> bool:
    # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1; older versions ignore it.
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")


def status(text: str) -> bool:
    return notify(f"STATUS={_one_line(text)}")


def watchdog_interval() -> float | None:
    """Ping period in seconds (half of WatchdogSec), or None when no watchdog is set."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
        pid = os.environ.get("WATCHDOG_PID")
        if pid is not None and int(pid) != os.getpid():
            return None  # the watchdog is meant for another process (e.g. our parent)
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


async def watchdog_loop(interval: float) -> None:
    """Ping forever; runs on the event loop, so pings stop when the loop is stuck."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
