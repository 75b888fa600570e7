"""Drills: a rehearsed failure through the daemon's own decision path, timed.

Each scenario injects through the core as a real failure would arrive, labelled
`drill` in every event, and never by breaking real equipment:

- `carrier`: the active path's carrier trunk (role `carrier`) in maintenance;
- `platform`: the SBC/PBX trunk the path requires (role `platform`) in maintenance;
- `link`: the uplink the path is reached through in maintenance;
- `site`: an evacuation to the remote paths, forced;
- `cooling`: the evacuation rule's sensors read a simulated rise through the sensor's
  own thresholds and the site rule, until the rule fires.

A drill measures injection → (detection) → decision → the actuators' routing applied
and read back → a synthetic call through the new path (when it has a `verified_by`
check) → restore → routing back on the original path → a call through it. It refuses
while another drill runs or while anything is degraded, aborts and restores at once
when a step does not happen in time or a call fails, and always leaves routing as it
found it. Nothing it injects is persisted: a crash mid-drill restarts without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from trunkguard.core.engine import DRILL
from trunkguard.core.events import Decision, Level, SiteChange, SiteState, State
from trunkguard.core.ids import Kind, Paths, TargetId
from trunkguard.core.policy import PathSpec
from trunkguard.core.sensor import SensorSpec
from trunkguard.core.site import AllOf, AnyOf, Rule
from trunkguard.hub import Hub
from trunkguard.obs.logging import get_logger
from trunkguard.sinks.latency import Applied

log = get_logger(__name__)
SCENARIOS = ("carrier", "platform", "link", "site", "cooling")
STEP_TIMEOUT = 15.0
RAMP_STEPS, RAMP_EVERY = 8, 0.25  # the simulated rise: 8 readings, 2 s to critical
# The manual drill figures of a utility hotline (the issue behind this feature).
MANUAL_S = {"carrier": 240.0, "link": 240.0, "platform": 180.0, "site": 840.0, "cooling": 840.0}


class DrillError(Exception):
    """A drill refused before it started; the text says why."""


@dataclass(frozen=True)
class Plan:
    id: str
    scenario: str
    group: str
    original: Paths
    inject: str  # what is done, in words
    targets: tuple[TargetId, ...] = ()  # put in maintenance
    sensors: tuple[str, ...] = ()  # simulated
    evacuate: bool = False


@dataclass
class _Watch:
    group: str
    decisions: asyncio.Queue[Decision] = field(default_factory=asyncio.Queue)
    applied: asyncio.Queue[Applied] = field(default_factory=asyncio.Queue)
    sites: asyncio.Queue[SiteChange] = field(default_factory=asyncio.Queue)


def rule_sensors(rule: Rule | None) -> Iterator[str]:
    if rule is None:
        return
    if isinstance(rule, AnyOf | AllOf):
        for r in rule.items:
            yield from rule_sensors(r)
    else:
        yield from rule.sensors


class Drills:
    """One drill at a time, through the hub; the report is a plain dict."""

    def __init__(
        self,
        hub: Hub,
        calls: Callable[[TargetId], Awaitable[tuple[bool, str, float | None] | None]],
        wall: Callable[[float], str],
        on_report: Callable[[dict[str, Any]], None] | None = None,
        roles: Callable[[], Mapping[TargetId, str]] = dict,
        settings: Callable[[str], dict[str, Any]] | None = None,
    ) -> None:
        self.hub, self.calls, self.wall, self.on_report = hub, calls, wall, on_report
        self.roles, self.settings = roles, settings
        self.running: str | None = None
        self._watch: _Watch | None = None
        self._tasks: set[asyncio.Task[dict[str, Any]]] = set()
        hub.subscribe(Decision, self._decision)
        hub.subscribe(Applied, self._applied)
        hub.subscribe(SiteChange, self._site)

    def _decision(self, d: Decision) -> None:
        if self._watch is not None and d.group == self._watch.group:
            self._watch.decisions.put_nowait(d)

    def _applied(self, a: Applied) -> None:
        if self._watch is not None and a.group == self._watch.group:
            self._watch.applied.put_nowait(a)

    def _site(self, c: SiteChange) -> None:
        if self._watch is not None:
            self._watch.sites.put_nowait(c)

    # ---- planning -----------------------------------------------------------------------

    def degraded(self) -> str | None:
        """Why the site is not in a state to drill on a schedule, or None: anything
        down, in maintenance, warn or worse, evacuating, fenced, pinned or serving."""
        e = self.hub.engine
        if e.site.evacuating is not None:
            return f"the site is evacuating ({e.site.evacuating})"
        if e.fenced is not None:
            return f"fenced ({e.fenced})"
        for t, s in e.states().items():
            if t.kind is not Kind.PEER and not t.dest and s is not State.UP:
                return f"{t} is {s}"
        for name, sh in e.sensors.items():
            if sh.level not in (Level.OK, Level.UNKNOWN):
                return f"sensor {name} is {sh.level}"
        for name, g in e.groups.items():
            if g.alarm or g.pinned is not None or g.took_over:
                return f"route group {name} is not on its own best path"
        return None

    def plan(self, scenario: str, group: str | None) -> Plan:
        """What the drill will do; DrillError if not now."""
        if scenario not in SCENARIOS:
            raise DrillError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
        if self.running is not None:
            raise DrillError(f"drill {self.running} is running: one at a time")
        e = self.hub.engine
        if e.site.evacuating is not None:
            raise DrillError(f"the site is evacuating ({e.site.evacuating}): no drill now")
        for name, gp in e.groups.items():
            if gp.alarm:
                raise DrillError(f"route group {name} has no path: no drill during an outage")
        remote = scenario in ("site", "cooling")
        if group is None:
            group = next(
                (
                    n
                    for n, gp in e.groups.items()
                    if len(gp.spec.paths) > 1
                    and (not remote or any(p.remote for p in gp.spec.paths))
                ),
                None,
            )
            if group is None:
                kind = "a remote path" if remote else "more than one path"
                raise DrillError(f"no route group with {kind} to drill")
        g = e.groups.get(group)
        if g is None:
            raise DrillError(f"unknown route group {group!r}")
        if g.active is None or not g.ready:
            raise DrillError(f"route group {group} has not decided yet")
        if g.pinned is not None or g.took_over:
            raise DrillError(f"route group {group} is pinned or serving a peer: no drill now")
        states = e.states()
        best = next((p for p in g.spec.paths if g.qualifies(p, states)), None)
        if best is None or best.name != g.active[0]:
            raise DrillError(f"route group {group} is not on its best path: a real failover is on")
        plan = Plan(
            id=time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2),
            scenario=scenario,
            group=group,
            original=g.active,
            inject="",
        )
        plan = self._plan_site(plan, best) if remote else self._plan_targets(plan, best)
        hit = set(plan.targets)  # and what is reached through them
        hit |= {t for p in g.spec.paths for t in p.requires if hit & set(e.depends_on(t))}
        down = [str(t) for p in g.spec.paths for t in p.requires if states.get(t) is not State.UP]
        alternatives = [
            p
            for p in g.spec.paths
            if p is not best
            and g.qualifies(p, states)
            and not hit & set(p.requires)
            and (p.remote or not remote)
        ]
        if not alternatives:
            what = f" ({', '.join(down)})" if down else ""
            raise DrillError(f"no other path of {group} qualifies{what}: no drill")
        return plan

    def _plan_targets(self, plan: Plan, best: PathSpec) -> Plan:
        e, roles, scenario = self.hub.engine, self.roles(), plan.scenario
        trunks = [t for t in best.requires if t.kind is Kind.TRUNK]
        if scenario == "link":
            links = [t for t in best.requires if t.kind is Kind.LINK]
            links += [lk for t in trunks for lk in e.depends_on(t) if lk not in links]
            if not links:
                raise DrillError(f"path {best.name} goes through no watched link")
            victim = links[0]
        else:
            mine = [t for t in trunks if roles.get(t, "carrier") == scenario]
            if not mine:
                raise DrillError(f"path {best.name} requires no trunk with role {scenario}")
            victim = mine[0]
        return Plan(
            plan.id,
            scenario,
            plan.group,
            plan.original,
            f"{victim} in maintenance ({DRILL})",
            targets=(victim,),
        )

    def _plan_site(self, plan: Plan, best: PathSpec) -> Plan:
        e = self.hub.engine
        if best.remote:
            raise DrillError(f"route group {plan.group} is on its remote path already")
        if plan.scenario == "site":
            return Plan(
                plan.id, "site", plan.group, plan.original, f"evacuation ({DRILL})", evacuate=True
            )
        names = list(dict.fromkeys(rule_sensors(e.site.spec.rule)))
        usable = [n for n in names if n in e.sensors and _can_simulate(e.sensors[n].spec)]
        if not usable:
            raise DrillError("the evacuation rule names no sensor with a critical level")
        for n in usable:
            if e.sensors[n].level is not Level.OK:
                raise DrillError(f"sensor {n} is {e.sensors[n].level}: no drill now")
        return Plan(
            plan.id,
            "cooling",
            plan.group,
            plan.original,
            f"simulated rise of {', '.join(usable)} to critical ({DRILL})",
            sensors=tuple(usable),
        )

    # ---- running ------------------------------------------------------------------------

    def start(self, plan: Plan) -> None:
        """Run in the background (a remote command: the report goes to MQTT)."""
        task = asyncio.get_running_loop().create_task(self.run(plan))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[dict[str, Any]]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            log.error("drill failed", error=f"{type(e).__name__}: {e}")

    async def run(self, plan: Plan, dry_run: bool = False) -> dict[str, Any]:
        report: dict[str, Any] = {
            "id": plan.id,
            "scenario": plan.scenario,
            "group": plan.group,
            "original": str(plan.original),
            "inject": plan.inject,
            "dry_run": dry_run,
            "phases": {},
            "calls": {},
            "manual_s": MANUAL_S.get(plan.scenario),
        }
        if self.settings is not None:
            report["settings"] = self.settings(plan.group)
        if dry_run:
            report["result"] = "planned"
            return report
        if self.running is not None:  # planned earlier, started later
            raise DrillError(f"drill {self.running} is running: one at a time")
        self.running = plan.id
        self._watch = watch = _Watch(plan.group)
        clock, hub = self.hub.clock, self.hub
        t0 = clock()
        report["started"] = self.wall(t0)
        phases: dict[str, float] = report["phases"]
        ramp: asyncio.Task[None] | None = None
        try:
            for t in plan.targets:
                hub.emit(hub.engine.set_maintenance(t, True, clock(), by=DRILL))
            if plan.evacuate:
                hub.emit(hub.engine.evacuate(True, clock(), by=DRILL))
            if plan.sensors:
                ramp = asyncio.create_task(self._ramp(plan.sensors))
                while True:
                    c = await self._next(watch.sites, "the evacuation rule firing")
                    if c.new is SiteState.EVACUATING:
                        break
                phases["detected"] = c.at - t0
                report["detected"] = c.reason
            d = await self._next(watch.decisions, "a failover decision")
            phases["decision"] = d.at - t0
            report["new"] = str(d.new)
            a = await self._until_applied(d.new)
            phases["applied"] = a.at - t0
            await self._call(report, "new_path", plan.group, d.new)
            phases["call_new_path"] = clock() - t0
            restore = clock()
            self._restore(plan, ramp)
            a = await self._until_applied(plan.original)
            phases["restored"] = a.at - t0
            phases["restore_applied"] = a.at - restore
            await self._call(report, "restored_path", plan.group, plan.original)
            phases["total"] = clock() - t0
            report["result"] = "passed"
        except (TimeoutError, _CallFailed) as e:
            report["result"], report["aborted"] = "aborted", str(e)
            if isinstance(e, _CallFailed):
                report["result"] = "failed"
            moved = hub.engine.groups[plan.group].active != plan.original
            self._restore(plan, ramp)
            if moved:
                with contextlib.suppress(TimeoutError):
                    await self._until_applied(plan.original)
            phases["total"] = clock() - t0
        finally:
            self._watch, self.running = None, None
            self._restore(plan, ramp)  # idempotent: whatever happened, nothing stays
        report["routing_after"] = str(hub.engine.groups[plan.group].active)
        report["left_as_found"] = report["routing_after"] == str(plan.original)
        if self.on_report is not None:
            self.on_report(report)
        return report

    async def _ramp(self, sensors: tuple[str, ...]) -> None:
        """Readings rising from each sensor's value to past critical, then held there."""
        e, hub = self.hub.engine, self.hub
        start = {n: e.sensors[n].value for n in sensors}
        for step in itertools.count(1):
            for n in sensors:
                if (sh := e.sensors.get(n)) is not None:  # a reload may remove it
                    v = _ramp_value(sh.spec, start[n], min(step / RAMP_STEPS, 1.0))
                    hub.emit(e.drill_sensor(n, v, hub.clock()))
            await asyncio.sleep(RAMP_EVERY)

    def _restore(self, plan: Plan, ramp: asyncio.Task[None] | None) -> None:
        """Undo the injection and fail back at once (the drill is over: no hold)."""
        hub, e = self.hub, self.hub.engine
        if ramp is not None:
            ramp.cancel()
        for t in plan.targets:
            hub.emit(e.set_maintenance(t, False, hub.clock(), by=DRILL))
        if plan.evacuate:
            with contextlib.suppress(ValueError):  # the rule holds for real: it stays
                hub.emit(e.evacuate(False, hub.clock(), by=DRILL))
        for n in plan.sensors:
            if n in e.sensors:
                hub.emit(e.drill_sensor(n, None, hub.clock()))
        if e.site.evacuating is None and plan.group in e.groups:
            hub.emit(e.failback(plan.group, hub.clock(), by=DRILL))

    async def _next(self, q: asyncio.Queue[Any], what: str) -> Any:
        try:
            return await asyncio.wait_for(q.get(), STEP_TIMEOUT)
        except TimeoutError:
            raise TimeoutError(f"no {what} within {STEP_TIMEOUT:g}s") from None

    async def _until_applied(self, paths: Paths) -> Applied:
        assert self._watch is not None
        while True:
            a: Applied = await self._next(self._watch.applied, f"routing {paths} applied")
            if a.paths == paths:
                return a

    async def _call(self, report: dict[str, Any], key: str, group: str, paths: Paths) -> None:
        g = self.hub.engine.groups[group]
        path = next(p for p in g.spec.paths if p.name == paths[0])
        if path.verified_by is None:
            return
        res = await self.calls(path.verified_by)
        if res is None:
            return
        ok, reason, answered_s = res
        report["calls"][key] = {
            "path": path.name,
            "check": str(path.verified_by),
            "ok": ok,
            "reason": reason,
            "answered_s": answered_s,
        }
        if not ok:
            raise _CallFailed(f"the call through {path.name} failed: {reason}")


class _CallFailed(Exception):
    """A synthetic call of the drill failed: restore at once."""


def _can_simulate(spec: SensorSpec) -> bool:
    if spec.kind == "bool":
        return spec.critical_when is not None
    return spec.critical is not None


def _ramp_value(spec: SensorSpec, start: float | bool | None, frac: float) -> float | bool:
    """The simulated reading `frac` of the way from the start to past critical."""
    if spec.kind == "bool":
        return bool(spec.critical_when) if frac >= 1.0 else not spec.critical_when
    sign = 1.0 if spec.direction == "above" else -1.0
    assert spec.critical is not None
    end = spec.critical + sign * spec.hysteresis
    if not isinstance(start, int | float) or isinstance(start, bool):
        start = end - sign * 5.0
    return round(start + (end - start) * frac, 3)
