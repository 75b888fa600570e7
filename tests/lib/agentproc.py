"""The real agent as a subprocess (optionally inside a namespace), with its JSON log as events."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Event = dict[str, Any]


class Agent:
    def __init__(
        self,
        config: Path,
        netns: str | None = None,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),  # e.g. unshare(1) and a shell that mounts first
    ) -> None:
        run = [sys.executable, "-m", "trunkguard", "run", "-c", str(config)]
        argv = [*prefix, *run, "--log-format", "json"]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.netns = netns
        self.events: list[Event] = []
        self.raw: list[str] = []
        self._q: queue.Queue[Event | None] = queue.Queue()
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict):
                self._q.put(ev)
        self._q.put(None)

    def mark(self) -> int:
        """An index for wait_for(since=...): only events logged after now count."""
        self.drain()
        return len(self.events)

    def wait_for(
        self, pred: Callable[[Event], bool], timeout: float, what: str, since: int = 0
    ) -> Event:
        """Block until a log event matches; events already read from `since` on count too."""
        for ev in self.events[since:]:
            if pred(ev):
                return ev
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"no {what} within {timeout}s; log tail:\n{''.join(self.raw[-15:])}"
                )
            try:
                ev = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if ev is None:
                raise RuntimeError(f"agent exited waiting for {what}:\n{''.join(self.raw[-15:])}")
            self.events.append(ev)
            if pred(ev):
                return ev

    def drain(self) -> None:
        while True:
            try:
                ev = self._q.get_nowait()
            except queue.Empty:
                return
            if ev is not None:
                self.events.append(ev)

    @staticmethod
    def applied(path: str) -> Callable[[Event], bool]:
        return lambda e: e.get("event") == "route applied" and e.get("path") == path

    @staticmethod
    def transition(target: str, new: str | None = None) -> Callable[[Event], bool]:
        """A trunk-level state change (to `new`, if given)."""
        return lambda e: (
            e.get("event") == "target transition"
            and e.get("target") == target
            and (new is None or e.get("new") == new)
        )

    @staticmethod
    def call_checked(name: str) -> Callable[[Event], bool]:
        return lambda e: e.get("event") == "call check" and e.get("call") == name

    def checks_passed(self, *names: str, timeout: float = 30) -> None:
        """Each call check's first result came in, and passed."""
        for name in names:
            ev = self.wait_for(Agent.call_checked(name), timeout, f"first {name} check")
            assert ev["ok"] is True, ev

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._reader.join(5)
        self.drain()
        return self.proc.returncode


def cli(*args: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "trunkguard", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
