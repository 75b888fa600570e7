"""The core as one object: target health machines plus route-group policies.

Pure: every method takes the time; nothing here does I/O. The daemon feeds it
verdicts and operator commands and carries out the returned transitions and
decisions; `desired()` is what the actuators converge to.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from trunkguard.core.events import Decision, State, Transition, Verdict
from trunkguard.core.health import HealthParams
from trunkguard.core.link import LinkHealth, LinkParams
from trunkguard.core.policy import GroupPolicy, GroupSpec
from trunkguard.core.sensor import Reading, SensorChange, SensorHealth, SensorSpec
from trunkguard.core.site import SiteChange, SitePolicy, SiteSpec, evaluate
from trunkguard.core.trunk import SINGLE, Quorum, TrunkHealth

_DEP_DOWN = (State.DOWN, State.MAINTENANCE)


@dataclass(slots=True)
class Step:
    transitions: list[Transition] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    # Per-destination changes of multi-destination trunks: reported, never routed on.
    dest_transitions: list[Transition] = field(default_factory=list)
    sensor_changes: list[SensorChange] = field(default_factory=list)
    site_changes: list[SiteChange] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.transitions
            or self.decisions
            or self.dest_transitions
            or self.sensor_changes
            or self.site_changes
        )


@dataclass(frozen=True, slots=True)
class Inputs:
    """Everything besides trunks the core watches (all optional)."""

    links: Mapping[str, LinkParams] = field(default_factory=dict)
    depends: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # trunk -> links
    sensors: Mapping[str, SensorSpec] = field(default_factory=dict)
    site: SiteSpec = field(default_factory=SiteSpec)


class Engine:
    def __init__(
        self,
        targets: Mapping[str, HealthParams],
        groups: list[GroupSpec],
        quorums: Mapping[str, Quorum] | None = None,
        inputs: Inputs | None = None,
        now: float = 0.0,
    ) -> None:
        self.targets: dict[str, TrunkHealth] = {}
        self.links: dict[str, LinkHealth] = {}
        self.sensors: dict[str, SensorHealth] = {}
        self.groups: dict[str, GroupPolicy] = {}
        self.site = SitePolicy(SiteSpec())
        self.reconfigure(targets, groups, quorums, inputs, now)

    def reconfigure(
        self,
        targets: Mapping[str, HealthParams],
        groups: list[GroupSpec],
        quorums: Mapping[str, Quorum] | None = None,
        inputs: Inputs | None = None,
        now: float = 0.0,
    ) -> Step:
        """Apply new settings, keeping what is known about targets and groups that remain.

        Returns what the new settings changed at once (a dependency dropped or added)."""
        inp = inputs or Inputs()
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
        old_l, self.links = self.links, {}
        for name, lp in inp.links.items():
            lh = old_l.get(name) or LinkHealth(name, lp)
            lh.reset(lp)
            self.links[name] = lh
        old_s, self.sensors = self.sensors, {}
        for name, sspec in inp.sensors.items():
            sh = old_s.get(name) or SensorHealth(sspec, created=now)
            sh.reset(sspec)
            self.sensors[name] = sh
        self.site.spec = inp.site
        # Trunks reached through links: a link going down takes them down at once.
        self._dependants: dict[str, list[str]] = {}
        changed: list[Transition] = []
        for trunk, th in self.targets.items():
            deps = inp.depends.get(trunk, ())
            for dep in deps:
                self._dependants.setdefault(dep, []).append(trunk)
            for dep in list(th.deps_down):
                if dep not in deps or dep not in self.links:
                    tr = th.set_dependency(dep, False, now, "no longer a dependency")
                    changed += [tr] if tr else []
            for dep in deps:
                via = self.links.get(dep)
                if via is not None and via.state in _DEP_DOWN:
                    tr = th.set_dependency(dep, True, now, via.reason)
                    changed += [tr] if tr else []
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
        self._view = _States(self.targets, self.links)
        return self._after(changed, now, now, site=True)

    def states(self) -> dict[str, State]:
        return dict(self._view)

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

    def observe_link(self, target: str, up: bool, reason: str, at: float) -> Step:
        lh = self.links.get(target)
        if lh is None:
            return Step()
        t = lh.observe(up, reason, at)
        return self._after([t], at, at) if t else Step()

    def observe_sensor(self, name: str, value: Reading, at: float) -> Step:
        sh = self.sensors.get(name)
        if sh is None:
            return Step()
        c = sh.observe(value, at)
        # Every reading can move a projection, so the site rule is asked each time.
        return self._after([], at, at, [c] if c else [], site=True)

    def sensor_failed(self, name: str, error: str) -> None:
        sh = self.sensors.get(name)
        if sh is not None:
            sh.failed(error)

    def tick(self, now: float) -> Step:
        """Run pending timers: link holds, stale sensors, site return, auto failback."""
        ts = [t for lh in self.links.values() if (t := lh.tick(now)) is not None]
        cs = [c for sh in self.sensors.values() if (c := sh.tick(now)) is not None]
        return self._after(ts, now, None, cs, site=True, all_groups=True)

    def next_wakeup(self) -> float | None:
        times = [t for g in self.groups.values() if (t := g.next_wakeup()) is not None]
        times += [t for lh in self.links.values() if (t := lh.due()) is not None]
        times += [t for sh in self.sensors.values() if (t := sh.stale_at()) is not None]
        if (t := self.site.next_wakeup()) is not None:
            times.append(t)
        return min(times, default=None)

    def set_maintenance(self, target: str, on: bool, now: float) -> Step:
        h: TrunkHealth | LinkHealth | None = self.targets.get(target) or self.links.get(target)
        if h is None:
            raise KeyError(f"unknown target {target!r}")
        t = h.set_maintenance(on, now)
        return self._after([t] if t else [], now, now)

    def evacuate(self, on: bool, now: float) -> Step:
        """Operator evacuation. Raises ValueError when `off` cannot be honoured."""
        c = self.site.force(on, now)
        return self._after([], now, now, site_change=c)

    def failover(self, group: str, path: str, now: float) -> Step:
        d = self._group(group).pin(path, self._view, now, self.site.evacuating)
        return Step([], [d] if d else [])

    def failback(self, group: str, now: float) -> Step:
        d = self._group(group).release(self._view, now)
        return Step([], [d] if d else [])

    def _group(self, name: str) -> GroupPolicy:
        g = self.groups.get(name)
        if g is None:
            raise KeyError(f"unknown route group {name!r}")
        return g

    def _after(
        self,
        ts: list[Transition],
        now: float,
        cause_at: float | None,
        sensor_changes: list[SensorChange] | None = None,
        *,
        site: bool = False,
        all_groups: bool = False,
        site_change: SiteChange | None = None,
    ) -> Step:
        """Carry transitions on: to dependent trunks, the site rule, the route groups."""
        for t in list(ts):
            for trunk in self._dependants.get(t.target, ()):
                down = t.new in _DEP_DOWN
                dt = self.targets[trunk].set_dependency(t.target, down, t.at, t.reason)
                if dt is not None:
                    ts.append(dt)
        step = Step(ts, sensor_changes=sensor_changes or [])
        rule = self.site.spec.rule
        # Without a rule (removed by a reload) an evacuation still has to end.
        if site_change is None and (site or ts) and (rule or self.site.evacuating):
            holding = None if rule is None else evaluate(rule, self.sensors, self._view, now)
            site_change = self.site.evaluate(holding, now)
        if site_change is not None:
            step.site_changes.append(site_change)
            all_groups, cause_at = True, site_change.at
        groups: Iterable[GroupPolicy] = self.groups.values()
        if not all_groups:
            fed = {id(g) for t in ts for g in self._groups_of.get(t.target, ())}
            groups = [g for g in groups if id(g) in fed]  # config order, as before
        evac = self.site.evacuating
        for g in groups:
            d = g.evaluate(self._view, now, cause_at, evac)
            if d is not None:
                step.decisions.append(d)
        return step


class _States(Mapping[str, State]):
    """A live read-only view of target states: no per-transition copy of 10,000 entries."""

    def __init__(self, targets: dict[str, TrunkHealth], links: dict[str, LinkHealth]) -> None:
        self._t, self._l = targets, links

    def __getitem__(self, key: str) -> State:
        h = self._t.get(key) or self._l.get(key)
        if h is None:
            raise KeyError(key)
        return h.state

    def __iter__(self) -> Iterator[str]:
        yield from self._t
        yield from self._l

    def __len__(self) -> int:
        return len(self._t) + len(self._l)
