"""Drills: a rehearsed failure through the daemon's own decision path, timed.

`carrier`: the active path's carrier is put in maintenance labelled `drill` (never by
breaking real equipment); `link`: the uplink it is reached through, the same way. The
drill measures injection → decision → the actuators'
routing applied and read back → a synthetic call through the new path (when it has a
`verified_by` check) → restore → routing back on the original path → a call through
it. It refuses while another drill runs or while anything is degraded (a group
without a path, a pinned or failed-over group, the site evacuating, a target down),
aborts and restores at once when a step does not happen in time, and always leaves
routing as it found it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trunkguard.calls.check import place
from trunkguard.core.events import Decision, State
from trunkguard.core.ids import Kind, Paths, TargetId
from trunkguard.hub import Hub
from trunkguard.sinks.latency import Applied

SCENARIOS = ("carrier", "link")
STEP_TIMEOUT = 15.0
# The manual drill figures of a utility hotline (the issue behind this feature).
MANUAL_S = {"carrier": 240.0, "link": 240.0, "platform": 180.0, "site": 840.0}


class DrillError(Exception):
    """A drill refused before it started; the text says why."""


@dataclass
class _Watch:
    group: str
    decisions: asyncio.Queue[Decision] = field(default_factory=asyncio.Queue)
    applied: asyncio.Queue[Applied] = field(default_factory=asyncio.Queue)


class Drills:
    """One drill at a time, through the hub; the report is a plain dict."""

    def __init__(
        self,
        hub: Hub,
        calls: Callable[[TargetId], dict[str, Any] | None],
        wall: Callable[[float], str],
        on_report: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.hub, self.calls, self.wall, self.on_report = hub, calls, wall, on_report
        self.running: str | None = None
        self._watch: _Watch | None = None
        hub.subscribe(Decision, self._decision)
        hub.subscribe(Applied, self._applied)

    def _decision(self, d: Decision) -> None:
        if self._watch is not None and d.group == self._watch.group:
            self._watch.decisions.put_nowait(d)

    def _applied(self, a: Applied) -> None:
        if self._watch is not None and a.group == self._watch.group:
            self._watch.applied.put_nowait(a)

    def plan(self, scenario: str, group: str | None) -> tuple[str, Paths, TargetId]:
        """The group, its active path and the carrier to take out; DrillError if not now."""
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
        if group is None:
            group = next((n for n, gp in e.groups.items() if len(gp.spec.paths) > 1), None)
            if group is None:
                raise DrillError("no route group with more than one path to drill")
        g = e.groups.get(group)
        if g is None:
            raise DrillError(f"unknown route group {group!r}")
        if g.active is None or not g.ready:
            raise DrillError(f"route group {group} has not decided yet")
        if g.pinned is not None or g.took_over:
            raise DrillError(f"route group {group} is pinned or serving a peer: no drill now")
        best = next((p for p in g.spec.paths if g.qualifies(p, e.states())), None)
        if best is None or best.name != g.active[0]:
            raise DrillError(f"route group {group} is not on its best path: a real failover is on")
        victims = [t for t in best.requires if t.kind is Kind.TRUNK]
        if scenario == "link":
            links = [t for t in best.requires if t.kind is Kind.LINK]
            links += [lk for t in victims for lk in e.depends_on(t) if lk not in links]
            if not links:
                raise DrillError(f"path {best.name} goes through no watched link")
            victims = links
        if not victims:
            raise DrillError(f"path {best.name} requires no trunk to take out")
        down = [
            str(t) for p in g.spec.paths for t in p.requires if e.states().get(t) is not State.UP
        ]
        alternatives = [p for p in g.spec.paths if p is not best and g.qualifies(p, e.states())]
        if not alternatives:
            raise DrillError(f"no other path of {group} qualifies ({', '.join(down)}): no drill")
        return group, g.active, victims[0]

    async def run(self, scenario: str, group: str | None, dry_run: bool) -> dict[str, Any]:
        gname, original, carrier = self.plan(scenario, group)
        drill_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)
        report: dict[str, Any] = {
            "id": drill_id,
            "scenario": scenario,
            "group": gname,
            "original": str(original),
            "inject": f"{carrier} in maintenance (drill)",
            "dry_run": dry_run,
            "phases": {},
            "calls": {},
            "manual_s": MANUAL_S.get(scenario),
        }
        if dry_run:
            report["result"] = "planned"
            return report
        self.running = drill_id
        self._watch = _Watch(gname)
        clock, hub = self.hub.clock, self.hub
        t0 = clock()
        report["started"] = self.wall(t0)
        phases: dict[str, float] = report["phases"]
        try:
            hub.emit(hub.engine.set_maintenance(carrier, True, clock(), by="drill"))
            d = await self._next(self._watch.decisions, "a failover decision")
            phases["decision"] = d.at - t0
            report["new"] = str(d.new)
            a = await self._until_applied(d.new)
            phases["applied"] = a.at - t0
            await self._call(report, "new_path", gname, d.new)
            phases["call_new_path"] = clock() - t0
            restore = clock()
            self._restore(carrier, gname)
            a = await self._until_applied(original)
            phases["restored"] = a.at - t0
            phases["restore_applied"] = a.at - restore
            await self._call(report, "restored_path", gname, original)
            phases["total"] = clock() - t0
            report["result"] = (
                "passed" if all(c["ok"] for c in report["calls"].values()) else "failed"
            )
        except TimeoutError as e:
            report["result"], report["aborted"] = "aborted", str(e)
            self._restore(carrier, gname)
            with contextlib.suppress(TimeoutError):
                await self._until_applied(original)
            phases["total"] = clock() - t0
        finally:
            self._watch, self.running = None, None
            hub.emit(hub.engine.set_maintenance(carrier, False, clock(), by="drill"))
        report["routing_after"] = str(hub.engine.groups[gname].active)
        report["left_as_found"] = report["routing_after"] == str(original)
        if self.on_report is not None:
            self.on_report(report)
        return report

    def _restore(self, carrier: TargetId, group: str) -> None:
        hub, now = self.hub, self.hub.clock()
        hub.emit(hub.engine.set_maintenance(carrier, False, now, by="drill"))
        # Back at once (the drill is over): no failback hold, as an operator's failback.
        hub.emit(hub.engine.failback(group, hub.clock()))

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
        spec = self.calls(path.verified_by)
        if spec is None:
            return
        r = await place(spec["spec"], spec["deadline"])
        report["calls"][key] = {
            "path": path.name,
            "ok": r.ok,
            "reason": r.reason,
            "answered_s": r.answered_s,
        }
