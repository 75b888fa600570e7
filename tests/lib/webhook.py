"""A webhook receiver on loopback (standing for a NOC's chat or ticket system): every
JSON document POSTed to it, with the path it came to."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Doc = dict[str, Any]
Received = queue.Queue[tuple[str, Doc]]


@contextmanager
def receiver() -> Iterator[tuple[int, Received]]:
    """(port, queue of (path, document)) for every POST."""
    got: Received = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.put((self.path, json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.server_address[1], got
    finally:
        server.shutdown()
        server.server_close()


def wait_doc(got: Received, pred: Callable[[str, Doc], bool], timeout: float) -> tuple[str, Doc]:
    """The first (path, document) matching pred; TimeoutError listing what came."""
    seen = []
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        try:
            path, doc = got.get(timeout=left)
        except queue.Empty:
            break
        if pred(path, doc):
            return path, doc
        seen.append((path, str(doc)[:120]))
    raise TimeoutError(f"nothing matching within {timeout}s; got {seen}")
