"""A trunk's health from the health of each destination it resolves to.

Pure. A trunk named by DNS can resolve to several destinations (SRV targets, A and
AAAA); each is probed and has its own rise/fall machine, and the trunk follows
`healthy_when`: any, all, or at least N destinations up.

Aggregation never guesses: the trunk changes state only when the destinations'
verdicts decide it, so a destination that appears after a DNS change (unknown
until probed) cannot flip a healthy trunk, and a trunk with no verdicts stays
unknown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from trunkguard.core.events import State, Transition, Verdict
from trunkguard.core.health import HealthParams, TargetHealth, move, set_maintenance
from trunkguard.core.ids import TargetId

SINGLE = ""  # the destination key of a trunk probed at one fixed address


@dataclass(frozen=True, slots=True)
class Quorum:
    mode: str = "any"  # "any" | "all" | "n"
    n: int = 1

    @classmethod
    def parse(cls, v: str | int) -> Quorum:
        if v in ("any", "all"):
            return cls(str(v))
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            return cls("n", v)
        raise ValueError(f"healthy_when must be any, all or a number >= 1, got {v!r}")

    def need(self, total: int) -> int:
        return {"any": 1, "all": total}.get(self.mode, self.n)

    def __str__(self) -> str:
        return str(self.n) if self.mode == "n" else self.mode


@dataclass(slots=True)
class TrunkHealth:
    name: TargetId
    params: HealthParams
    quorum: Quorum = field(default_factory=Quorum)
    state: State = State.UNKNOWN
    since: float = 0.0
    reason: str = "no verdict yet"
    maintenance: bool = False
    probed_state: State = State.UNKNOWN
    dests: dict[str, TargetHealth] = field(default_factory=dict)
    deps_down: dict[TargetId, str] = field(default_factory=dict)  # dependency -> why down

    def set_dests(self, keys: Iterable[str], at: float) -> Transition | None:
        """The destinations the trunk resolves to now; known ones keep their state."""
        old = self.dests
        self.dests = {
            k: old[k] if k in old else TargetHealth(self.name.at(k), self.params)
            for k in dict.fromkeys(keys)
        }
        return self._reaggregate(at, "destinations changed")

    def observe(self, key: str, v: Verdict) -> tuple[Transition | None, Transition | None]:
        """Feed one destination's verdict: (destination transition, trunk transition)."""
        if key not in self.dests:
            return None, None  # a late result for a destination DNS no longer returns
        t = self.dests[key].observe(v)
        if t is None:
            return None, None
        why = t.reason if len(self.dests) == 1 else f"{key}: {t.reason}"
        return t, self._reaggregate(v.at, why)

    def next_delay(self, key: str = SINGLE) -> float:
        th = self.dests.get(key)
        return th.next_delay() if th else self.params.fast_interval

    def not_before(self, key: str = SINGLE) -> float | None:
        th = self.dests.get(key)
        return th.not_before() if th else None

    @property
    def hold_until(self) -> float | None:
        holds = [h for d in self.dests.values() if (h := d.hold_until) is not None]
        return max(holds, default=None)

    def set_maintenance(self, on: bool, at: float, by: str = "operator") -> Transition | None:
        if self.deps_down and not on:
            return set_maintenance(self, on, at, State.DOWN, f"{self._dep_text()}:", by)
        return set_maintenance(self, on, at, self.probed_state, "probes say", by)

    def set_dependency(self, dep: TargetId, down: bool, at: float, why: str) -> Transition | None:
        """A link (or other target) this trunk is reached through went down or came back.

        While any dependency is down the trunk is down, whatever its last probes said:
        they went out over the dead link, and waiting `fall` probes for them to fail
        is exactly the delay the link watcher exists to avoid.
        """
        was = bool(self.deps_down)
        if down:
            self.deps_down[dep] = why
        else:
            self.deps_down.pop(dep, None)
        if bool(self.deps_down) == was or self.maintenance:
            return None
        if self.deps_down:
            return move(self, State.DOWN, at, f"{dep} down: {why}")
        return move(self, self.probed_state, at, f"{dep} back up, probes say {self.probed_state}")

    def _dep_text(self) -> str:
        return ", ".join(f"{d} down" for d in self.deps_down)

    def reset(self, params: HealthParams, quorum: Quorum) -> None:
        self.params, self.quorum = params, quorum
        for d in self.dests.values():
            d.reset(params)

    def _reaggregate(self, at: float, why: str) -> Transition | None:
        states = [d.state for d in self.dests.values()]
        total, up = len(states), states.count(State.UP)
        unknown = states.count(State.UNKNOWN)
        need = self.quorum.need(total)
        if total == 0:
            return None
        if up >= need:
            new = State.UP
        elif up + unknown < need:
            new = State.DOWN
        else:
            return None  # undecided: keep what we had
        if new is self.probed_state:
            return None
        self.probed_state = new
        if total > 1:
            why = f"{up} of {total} destinations up (healthy_when {self.quorum}); {why}"
        return None if self.maintenance or self.deps_down else move(self, new, at, why)
