"""The actuator contract: level-triggered outputs driven by a desired state.

The desired state is a mapping of route group -> active path(s) (Desired). Groups the
core has not decided yet are absent; an actuator ignores groups and paths it has
no actions for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from trunkguard.core.ids import Paths

Desired = Mapping[str, Paths]  # route group -> its active path(s)


class ActuatorError(Exception):
    """An actuator could not converge.

    `reason` is a short, stable label for metrics ("timeout", "exit", "spawn",
    "netlink", "verify", ...); the message is one line for logs and reports.
    """

    def __init__(self, reason: str, message: str, groups: frozenset[str] = frozenset()) -> None:
        # One line: messages may quote program output or kernel errors.
        message = " ".join(message.split())
        super().__init__(message)
        self.reason = reason
        self.message = message
        # The route groups that failed, when the actuator knows; empty means "all of
        # them". The others were applied: their failovers must not wait for a retry.
        self.groups = groups

    def __repr__(self) -> str:
        return f"ActuatorError({self.reason!r}, {self.message!r})"


@runtime_checkable
class Actuator(Protocol):
    """An output. An implementation whose apply() itself reads the real system and
    writes only what differs may set `reads_before_write = True`; the converger then
    skips its own verify before applying a new desired state (one read less on the
    failover path)."""

    name: str
    kind: str

    async def apply(self, desired: Desired) -> bool | None:
        """Converge the real system to `desired`. Idempotent; raises ActuatorError.

        Returns False when it found nothing to change, True when it wrote, None when
        it cannot tell."""
        ...

    async def verify(self, desired: Desired) -> bool:
        """Read the real system back: True when it matches `desired`."""
        ...

    async def close(self) -> None:
        """Release resources. Never undoes anything (fail-static)."""
        ...
