"""The core as one object: target health machines plus route-group policies.

Pure: every method takes the time; nothing here does I/O. The daemon feeds it
verdicts and operator commands and carries out the returned transitions and
decisions; `desired()` is what the actuators converge to.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from agent.core.events import Decision, State, Transition, Verdict
from agent.core.health import HealthParams
from agent.core.policy import GroupPolicy, GroupSpec
from agent.core.trunk import SINGLE, Quorum, TrunkHealth


@dataclass(slots=True)
class Step:
    transitions: list[Transition] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    # Per-destination changes of multi-destination trunks: reported, never routed on.
    dest_transitions: list[Transition] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.transitions or self.decisions or self.dest_transitions)


class Engine:
    def __init__(
        self,
        targets: Mapping[str, HealthParams],
        groups: list[GroupSpec],
        quorums: Mapping[str, Quorum] | None = None,
    ) -> None:
        self.targets: dict[str, TrunkHealth] = {}
        self.groups: dict[str, GroupPolicy] = {}
        self.reconfigure(targets, groups, quorums)

    def reconfigure(
        self,
        targets: Mapping[str, HealthParams],
        groups: list[GroupSpec],
        quorums: Mapping[str, Quorum] | None = None,
    ) -> None:
        """Apply new settings, keeping what is known about targets and groups that remain."""
        old_t, old_g = self.targets, self.groups
        self.targets = {}
        for name, params in targets.items():
            quorum = (quorums or {}).get(name, Quorum())
            th = old_t.get(name)
            if th is None:
                th = TrunkHealth(name, params, quorum)
                th.set_dests([SINGLE], 0.0)  # one fixed address until told otherwise
            elif th.params != params or th.quorum != quorum:
                th.reset(params, quorum)
            self.targets[name] = th
        self.groups = {}
        for spec in groups:
            gp = old_g.get(spec.name)
            paths = {p.name for p in spec.paths}
            if gp is None:
                gp = GroupPolicy(spec)
            else:
                gp.spec = spec
                if gp.pinned not in paths:
                    gp.pinned = None
                if gp.active not in paths:
                    gp.active, gp.ready = None, False  # decided afresh on the next evaluation
                gp.qualified_since = {k: v for k, v in gp.qualified_since.items() if k in paths}
            self.groups[spec.name] = gp
        # Which groups a target feeds: a transition re-evaluates only those.
        self._groups_of: dict[str, list[GroupPolicy]] = {}
        for gp in self.groups.values():
            for t in gp.spec.targets:
                self._groups_of.setdefault(t, []).append(gp)
        self._view = _States(self.targets)

    def states(self) -> dict[str, State]:
        return {name: th.state for name, th in self.targets.items()}

    def desired(self) -> dict[str, str]:
        return {n: g.active for n, g in self.groups.items() if g.ready and g.active is not None}

    def observe(self, v: Verdict, dest: str = SINGLE) -> Step:
        th = self.targets.get(v.target)
        if th is None:  # a late result from a target removed by a reload
            return Step()
        dt, t = th.observe(dest, v)
        # Without a trunk transition no group's inputs changed; timers are tick()'s job.
        step = self._after([t], v.at, v.at) if t else Step()
        if dt is not None and len(th.dests) > 1:
            step.dest_transitions.append(dt)
        return step

    def set_dests(self, target: str, keys: list[str], now: float) -> Step:
        """What a trunk resolves to now (a DNS answer, or its one fixed address)."""
        th = self.targets.get(target)
        if th is None:
            return Step()
        t = th.set_dests(keys, now)
        return self._after([t], now, now) if t else Step()

    def tick(self, now: float) -> Step:
        """Run pending timers (auto failback after hold)."""
        return self._after([], now, None)

    def next_wakeup(self) -> float | None:
        times = [t for g in self.groups.values() if (t := g.next_wakeup()) is not None]
        return min(times, default=None)

    def set_maintenance(self, target: str, on: bool, now: float) -> Step:
        th = self.targets.get(target)
        if th is None:
            raise KeyError(f"unknown target {target!r}")
        t = th.set_maintenance(on, now)
        return self._after([t] if t else [], now, now)

    def failover(self, group: str, path: str, now: float) -> Step:
        d = self._group(group).pin(path, self._view, now)
        return Step([], [d] if d else [])

    def failback(self, group: str, now: float) -> Step:
        d = self._group(group).release(self._view, now)
        return Step([], [d] if d else [])

    def _group(self, name: str) -> GroupPolicy:
        g = self.groups.get(name)
        if g is None:
            raise KeyError(f"unknown route group {name!r}")
        return g

    def _after(self, ts: list[Transition], now: float, cause_at: float | None) -> Step:
        """Re-evaluate the groups these transitions feed (all groups on a timer tick)."""
        step = Step(ts)
        groups: Iterable[GroupPolicy] = self.groups.values()
        if ts:
            fed = {id(g) for t in ts for g in self._groups_of.get(t.target, ())}
            groups = [g for g in groups if id(g) in fed]  # config order, as before
        for g in groups:
            d = g.evaluate(self._view, now, cause_at)
            if d is not None:
                step.decisions.append(d)
        return step


class _States(Mapping[str, State]):
    """A live read-only view of target states: no per-transition copy of 10,000 entries."""

    def __init__(self, targets: dict[str, TrunkHealth]) -> None:
        self._t = targets

    def __getitem__(self, key: str) -> State:
        return self._t[key].state

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)
