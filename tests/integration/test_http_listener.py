"""The metrics listener against hostile clients: a thousand idle or byte-at-a-time
connections, oversized heads, odd methods and path traversal. Metrics are still served
at once, nothing but /metrics is ever served, and idle connections are closed."""

from __future__ import annotations

import resource
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.lib.procs import free_port
from trunkguard.obs import http
from trunkguard.obs.metrics import Metrics

pytestmark = pytest.mark.integration


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(http, "HEAD_TIMEOUT", 1.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    p = free_port(socket.SOCK_STREAM)
    stop = Metrics().serve("127.0.0.1", p)
    try:
        yield p
    finally:
        stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def scrape(port: int) -> float:
    start = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200 and b"trunkguard_build_info" in r.read()
    return time.monotonic() - start


def raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_a_thousand_slow_clients_do_not_stop_a_scrape(port: int) -> None:
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(1000)]
    try:
        for i, s in enumerate(slow):
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"G")
        assert scrape(port) < 1.0
        # Every one of them is hung up on once its head is late.
        time.sleep(1.5)  # past HEAD_TIMEOUT: what is measured is that they are closed
        for s in slow[:50]:
            assert s.recv(16) == b""
        assert scrape(port) < 1.0
    finally:
        for s in slow:
            s.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 100_000 + b"\r\n\r\n", b"431"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 2000000000\r\n\r\n", b"405"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"400"),
        (b"GET /../../../../etc/passwd HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /metrics/../../etc/passwd HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.0\r\n\r\n", b"404"),
        (b"GET /index.html HTTP/1.1\r\n\r\n", b"404"),
    ],
)
def test_bad_requests_get_a_status_and_nothing_else(
    port: int, request_bytes: bytes, status: bytes
) -> None:
    reply = raw(port, request_bytes)
    assert reply.split(b" ", 2)[1] == status, reply[:100]
    assert b"root:" not in reply and b"trunkguard_" not in reply
    assert scrape(port) < 1.0


def test_head_and_filtered_scrapes(port: int) -> None:
    reply = raw(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\n")
    reply = raw(port, b"GET /metrics?name[]=trunkguard_build_info HTTP/1.1\r\n\r\n")
    body = reply.split(b"\r\n\r\n", 1)[1]
    assert b"trunkguard_build_info" in body and b"trunkguard_target_up" not in body


def test_clients_that_never_read_are_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two clients that ask for a big scrape and never read hold both workers only
    until SEND_TIMEOUT, after which the next scrape is answered."""
    monkeypatch.setattr(http, "SEND_TIMEOUT", 1.0)
    m = Metrics()
    for i in range(20_000):  # about 30 MB of histogram lines: more than socket buffers
        m.sip_options_rtt_seconds.labels(f"trunk-{i}", "192.0.2.1:5060").observe(0.001)
    p = free_port(socket.SOCK_STREAM)
    stop = m.serve("127.0.0.1", p)
    stuck = []
    try:
        for _ in range(2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", p))
            s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            stuck.append(s)
        start = time.monotonic()
        reply = raw(p, b"GET /metrics?name[]=trunkguard_build_info HTTP/1.1\r\n\r\n")
        took = time.monotonic() - start
        assert b"trunkguard_build_info" in reply
        assert took < 4.0, took  # after SEND_TIMEOUT (1 s) freed a worker, not never
    finally:
        for s in stuck:
            s.close()
        stop()
