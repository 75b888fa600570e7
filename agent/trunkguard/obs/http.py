"""The agent's HTTP listener (Prometheus /metrics), built not to be tied up.

Two kinds of thread, neither one per connection: one reads request heads from every
connection at once (selectors), each with a deadline and a size cap, so slow or idle
clients (slowloris) cost a socket and a few bytes, never a thread; complete GET
requests go to a small pool of workers that render and send. Paths are looked up in a
fixed table: nothing is ever read from the file system.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

Query = dict[str, list[str]]
# A route renders (content type, body chunks) for a query; it runs in a worker thread.
Route = Callable[[Query], tuple[str, Iterable[bytes]]]

MAX_HEAD = 8192  # request line and headers; a scrape sends about 300 bytes
CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
HEAD_TIMEOUT = 5.0  # to send a whole request head
SEND_TIMEOUT = 30.0  # for a whole response: a client that reads slowly is cut off
MAX_CONNECTIONS = 1024  # open at once; more are closed on accept
WORKERS = 2
QUEUE = 64  # complete requests waiting for a worker; more get 503


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    deadline: float
    head: bytearray = field(default_factory=bytearray)


class HttpServer:
    def __init__(self, host: str, port: int, routes: Mapping[str, Route]) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(128)
            self._listener.setblocking(False)
        except OSError:
            self._listener.close()
            raise
        self._routes = dict(routes)
        self._conns: dict[socket.socket, _Conn] = {}
        self._work: queue.Queue[tuple[socket.socket, bytes] | None] = queue.Queue(QUEUE)
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._threads = [threading.Thread(target=self._io, name="http-io", daemon=True)]
        self._threads += [
            threading.Thread(target=self._worker, name=f"http-{i}", daemon=True)
            for i in range(WORKERS)
        ]

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> HttpServer:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        for _ in range(WORKERS):
            with contextlib.suppress(queue.Full):
                self._work.put_nowait(None)
        for t in self._threads:
            t.join(timeout=5)
        self._listener.close()
        for s in (self._wake_r, self._wake_w, *self._conns):
            s.close()
        self._conns.clear()

    # ---- reading request heads: one thread for every connection ----------------------

    def _io(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping:
                for key, _ in sel.select(timeout=0.5):
                    if key.fileobj is self._listener:
                        self._accept(sel)
                    elif key.fileobj is not self._wake_r:
                        self._read(sel, self._conns[key.fileobj])  # type: ignore[index]
                self._expire(sel, time.monotonic())
        finally:
            sel.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        for _ in range(64):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EMFILE and friends: the backlog waits
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            self._conns[sock] = _Conn(sock, time.monotonic() + HEAD_TIMEOUT)
            sel.register(sock, selectors.EVENT_READ)

    def _read(self, sel: selectors.BaseSelector, c: _Conn) -> None:
        try:
            data = c.sock.recv(MAX_HEAD + 1 - len(c.head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sel, c)
            return
        c.head += data
        if b"\r\n\r\n" in c.head or b"\n\n" in c.head:
            self._hand_over(sel, c, bytes(c.head))
        elif len(c.head) > MAX_HEAD:
            self._hand_over(sel, c, b"")  # answered 431

    def _hand_over(self, sel: selectors.BaseSelector, c: _Conn, head: bytes) -> None:
        sel.unregister(c.sock)
        del self._conns[c.sock]
        try:
            self._work.put_nowait((c.sock, head))
        except queue.Full:
            _answer(c.sock, "503 Service Unavailable", "text/plain", [b"busy\n"])

    def _expire(self, sel: selectors.BaseSelector, now: float) -> None:
        for c in [c for c in self._conns.values() if c.deadline <= now]:
            self._drop(sel, c)

    def _drop(self, sel: selectors.BaseSelector, c: _Conn) -> None:
        sel.unregister(c.sock)
        del self._conns[c.sock]
        c.sock.close()

    # ---- answering: a few workers --------------------------------------------------------

    def _worker(self) -> None:
        while True:
            job = self._work.get()
            if job is None:
                return
            sock, head = job
            try:
                self._respond(sock, head)
            except Exception:
                sock.close()

    def _respond(self, sock: socket.socket, head: bytes) -> None:
        if not head:
            _answer(sock, "431 Request Header Fields Too Large", "text/plain", [b"too big\n"])
            return
        line = head.split(b"\n", 1)[0].decode("latin-1").strip().split(" ")
        if len(line) != 3 or not line[2].startswith("HTTP/1."):
            _answer(sock, "400 Bad Request", "text/plain", [b"bad request\n"])
            return
        method, target, _version = line
        if method not in ("GET", "HEAD"):
            _answer(sock, "405 Method Not Allowed", "text/plain", [b"GET only\n"])
            return
        path, _, query = target.partition("?")
        route = self._routes.get(unquote(path))
        if route is None:
            _answer(sock, "404 Not Found", "text/plain", [b"not found\n"])
            return
        ctype, body = route(parse_qs(query))
        _answer(sock, "200 OK", ctype, [] if method == "HEAD" else body)


def _answer(sock: socket.socket, status: str, ctype: str, body: Iterable[bytes]) -> None:
    """Send a close-delimited response within SEND_TIMEOUT in all; then close."""
    deadline = time.monotonic() + SEND_TIMEOUT
    try:
        sock.setblocking(True)
        head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nConnection: close\r\n"
        if ctype.startswith("text/html"):  # the status page: nothing runs, nothing loads
            head += f"Content-Security-Policy: {CSP}\r\nX-Content-Type-Options: nosniff\r\n"
        head += "\r\n"
        for chunk in itertools.chain((head.encode(),), body):  # streamed, never all in memory
            left = deadline - time.monotonic()
            if left <= 0:
                return  # a worker is not held hostage by a slow reader
            sock.settimeout(left)
            sock.sendall(chunk)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        sock.close()
