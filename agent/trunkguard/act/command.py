"""External programs as an actuator: one argv per (group, path), never a shell.

Programs run through trunkguard.procs: a minimal environment (never the daemon's own,
which may hold secrets), stdin from /dev/null, in their own process group so that
a timeout kills everything they started.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from trunkguard.act.base import ActuatorError, Desired
from trunkguard.obs.logging import get_logger
from trunkguard.procs import BASE_ENV, ProgramError, run_program

log = get_logger(__name__)


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

    def _todo(self, desired: Desired) -> list[tuple[str, str, CommandSpec]]:
        out = []
        for group, paths in desired.items():
            path = paths[0]  # command groups are failover groups: one active path
            spec = self._commands.get((group, path))
            if spec is not None:
                out.append((group, path, spec))
        return out

    async def apply(self, desired: Desired) -> bool:
        failures: list[ActuatorError] = []
        failed: set[str] = set()
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
                failed.add(group)
                continue
            self._applied[group] = path
            self._stale.discard(group)
        if failures:
            detail = "; ".join(e.message for e in failures)
            raise ActuatorError(failures[0].reason, f"{self.name}: {detail}", frozenset(failed))
        return ran

    async def verify(self, desired: Desired) -> bool:
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
        try:
            await run_program(argv, timeout=limit, env=self._environ(group, path))
        except ProgramError as e:
            raise ActuatorError(e.reason, f"{group}->{path}: {e.message}") from e
        log.info("command ran", actuator=self.name, group=group, path=path, program=argv[0])
