"""`ip monitor` in a namespace as an independent observer for benchmarks: every line is
timestamped as it arrives and classified, and callers wait for a kind of line."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Sequence

Classify = Callable[[str], str | None]


def route_via(prefix: str) -> Classify:
    """'via <gateway>' for a route to `prefix` being installed."""

    def classify(line: str) -> str | None:
        if line.startswith(prefix) and " via " in line:
            return "via " + line.split(" via ")[1].split()[0]
        return None

    return classify


class IpMonitor:
    def __init__(self, netns: str, objects: Sequence[str], classify: Classify) -> None:
        self.proc = subprocess.Popen(
            ["ip", "-n", netns, "monitor", *objects], stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.classify = classify
        self.events: list[tuple[float, str]] = []
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            what = self.classify(line)
            if what:
                with self.cv:
                    self.events.append((now, what))
                    self.cv.notify_all()

    def wait(self, what: str, after: float, timeout: float) -> float:
        """When a line of kind `what` arrived at or after `after` (monotonic)."""
        end = time.monotonic() + timeout
        with self.cv:
            while True:
                for t, w in self.events:
                    if w == what and t >= after:
                        return t
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what} not seen")
                self.cv.wait(left)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
