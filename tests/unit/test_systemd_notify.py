"""sd_notify over real AF_UNIX datagram sockets, as systemd's manager would receive them."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from trunkguard.obs import systemd


@pytest.fixture
def manager_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_not_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # a transport we do not speak
    assert systemd.notify("READY=1") is False


def test_nobody_listening_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert systemd.notify("READY=1") is False


def test_ready_status_stopping_reloading(manager_socket: socket.socket) -> None:
    assert systemd.ready("3 trunks up")
    assert manager_socket.recv(4096) == b"READY=1\nSTATUS=3 trunks up"
    assert systemd.status("carrierA down\nMAINPID=1")  # no injected assignment
    assert manager_socket.recv(4096) == b"STATUS=carrierA down MAINPID=1"
    assert systemd.stopping()
    assert manager_socket.recv(4096) == b"STOPPING=1"
    assert systemd.reloading()
    lines = manager_socket.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, usec = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert 0 <= time.monotonic_ns() // 1000 - int(usec) < 5_000_000  # CLOCK_MONOTONIC


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"trunkguard-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


async def test_watchdog_loop_pings(manager_socket: socket.socket) -> None:
    manager_socket.setblocking(False)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(systemd.watchdog_loop(0.01))
    try:
        for _ in range(3):
            assert await asyncio.wait_for(loop.sock_recv(manager_socket, 4096), 5) == b"WATCHDOG=1"
    finally:
        task.cancel()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("10000000", None, 5.0),
        ("10000000", "self", 5.0),
        ("10000000", "1", None),  # meant for another process
        ("0", None, None),
        ("", None, None),
        ("junk", None, None),
        ("10000000", "junk", None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for key, val in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if val is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, str(os.getpid()) if val == "self" else val)
    assert systemd.watchdog_interval() == expected
