"""External programs as an actuator: one argv per (group, path), never a shell.

Programs run with a minimal environment (never the daemon's own, which may hold
secrets), stdin from /dev/null, in their own process group so that a timeout
kills everything they started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from agent.act.base import ActuatorError

log = logging.getLogger(__name__)

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
STDERR_TAIL = 8192  # bytes of stderr kept for the error message
ERROR_LINE_MAX = 200
DRAIN_AFTER_EXIT = 0.5  # a daemonised grandchild may keep stderr open


@dataclass(frozen=True)
class CommandSpec:
    argv: tuple[str, ...]
    verify: tuple[str, ...] | None = None
    timeout: float = 10.0

    def __post_init__(self) -> None:
        # Accept lists from config, but store tuples so the spec stays hashable.
        object.__setattr__(self, "argv", tuple(self.argv))
        if self.verify is not None:
            object.__setattr__(self, "verify", tuple(self.verify))
        if not self.argv or (self.verify is not None and not self.verify):
            raise ValueError("argv (and verify, when given) must not be empty")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")


class CommandActuator:
    kind = "command"

    def __init__(
        self,
        name: str,
        commands: Mapping[tuple[str, str], CommandSpec],
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._commands = dict(commands)
        self._env = dict(env or {})
        self._applied: dict[str, str] = {}  # group -> last path known in place
        self._stale: set[str] = set()  # groups whose state is in doubt

    def _todo(self, desired: Mapping[str, str]) -> list[tuple[str, str, CommandSpec]]:
        out = []
        for group, path in desired.items():
            spec = self._commands.get((group, path))
            if spec is not None:
                out.append((group, path, spec))
        return out

    async def apply(self, desired: Mapping[str, str]) -> bool:
        failures: list[ActuatorError] = []
        ran = False
        for group, path, spec in self._todo(desired):
            if self._applied.get(group) == path and group not in self._stale:
                continue
            try:
                ran = True
                await self._run(spec.argv, spec.timeout, group, path)
            except ActuatorError as e:
                self._stale.add(group)  # it may have half-run: redo even if we go back
                failures.append(e)
                continue
            self._applied[group] = path
            self._stale.discard(group)
        if failures:
            detail = "; ".join(e.message for e in failures)
            raise ActuatorError(failures[0].reason, f"{self.name}: {detail}")
        return ran

    async def verify(self, desired: Mapping[str, str]) -> bool:
        ok = True
        for group, path, spec in self._todo(desired):
            if spec.verify is None:
                here = self._applied.get(group) == path and group not in self._stale
            else:
                try:
                    await self._run(spec.verify, spec.timeout, group, path)
                    here = True
                except ActuatorError as e:
                    if e.reason != "exit":
                        raise
                    here = False
                if here:
                    # Confirmed in place (e.g. after a restart): no need to run argv.
                    self._applied[group] = path
            if not here:
                self._stale.add(group)
                ok = False
            else:
                self._stale.discard(group)
        return ok

    async def close(self) -> None:
        """Nothing to release: every program is awaited (or killed) by its call."""

    def _environ(self, group: str, path: str) -> dict[str, str]:
        return {
            **BASE_ENV,
            **self._env,
            "TRUNKGUARD_GROUP": group,
            "TRUNKGUARD_PATH": path,
            "TRUNKGUARD_PREVIOUS_PATH": self._applied.get(group, ""),
        }

    async def _run(self, argv: tuple[str, ...], limit: float, group: str, path: str) -> None:
        what = f"{group}->{path}: {argv[0]}"
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=self._environ(group, path),
                start_new_session=True,  # own process group: killable as a whole
            )
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in argv
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise ActuatorError("spawn", f"{what}: cannot start: {reason}") from e
        assert proc.stderr is not None
        tail = bytearray()
        reader = asyncio.create_task(_read_tail(proc.stderr, tail))
        try:
            try:
                async with asyncio.timeout(limit):
                    code = await proc.wait()
            except TimeoutError:
                _kill_group(proc.pid)
                raise ActuatorError("timeout", f"{what}: killed after {limit:g}s") from None
            # Stop reading soon even if a background child still holds stderr.
            await asyncio.wait([reader], timeout=DRAIN_AFTER_EXIT)
        finally:
            if proc.returncode is None:  # cancelled or timed out: leave nothing behind
                _kill_group(proc.pid)
                await asyncio.shield(proc.wait())
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if code != 0:
            how = f"exited with {code}" if code > 0 else f"killed by signal {-code}"
            line = _last_line(bytes(tail))
            raise ActuatorError("exit", f"{what}: {how}" + (f": {line}" if line else ""))
        log.info("%s: %s ok", self.name, what)


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
