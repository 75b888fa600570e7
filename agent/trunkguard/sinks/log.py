"""The log: one structured line per transition, decision, sensor, site, takeover and
fence change, per route group that loses (or regains) every path, and per failed or
drift-repairing actuator run."""

from __future__ import annotations

from collections.abc import Sequence

from structlog.typing import FilteringBoundLogger

from trunkguard.act.converge import ApplyReport
from trunkguard.core.events import (
    Decision,
    DestTransition,
    Event,
    Fence,
    Level,
    SensorChange,
    SiteChange,
    SiteState,
    State,
    TakeoverChange,
    Transition,
)
from trunkguard.hub import Hub

_ALARMS = (Level.WARN, Level.CRITICAL, Level.STALE)


class LogSink:
    def __init__(self, hub: Hub, log: FilteringBoundLogger) -> None:
        self.log, self.engine = log, hub.engine
        self.alarms: set[str] = set()  # groups without a qualifying path, as last logged
        hub.subscribe(Transition, self.transition)
        hub.subscribe(DestTransition, self.dest_transition)
        hub.subscribe(SensorChange, self.sensor)
        hub.subscribe(SiteChange, self.site)
        hub.subscribe(Decision, self.decision)
        hub.subscribe(TakeoverChange, self.takeover)
        hub.subscribe(Fence, self.fence)
        hub.subscribe(ApplyReport, self.report)
        hub.after_each(self.batch)

    def transition(self, t: Transition) -> None:
        self.log.info(
            "target transition",
            target=str(t.target),
            old=t.old.value,
            new=t.new.value,
            reason=t.reason,
        )

    def dest_transition(self, t: DestTransition) -> None:
        self.log.info(
            "destination transition",
            target=str(t.target._replace(dest="")),
            dest=t.target.dest,
            old=t.old.value,
            new=t.new.value,
            reason=t.reason,
        )

    def sensor(self, c: SensorChange) -> None:
        log = self.log.warning if c.new in _ALARMS else self.log.info
        log("sensor", sensor=c.sensor, old=c.old.value, new=c.new.value, reason=c.reason)

    def site(self, c: SiteChange) -> None:
        log = self.log.error if c.new is SiteState.EVACUATING else self.log.warning
        log("site", old=c.old.value, new=c.new.value, reason=c.reason, forced=c.forced)

    def decision(self, d: Decision) -> None:
        self.log.warning(
            "route change",
            group=d.group,
            old=None if d.old is None else str(d.old),
            new=str(d.new),
            kind=d.kind.value,
            reason=d.reason,
        )

    def batch(self, events: Sequence[Event]) -> None:
        """A group with no path left is an alarm, said once (not a silent black hole)."""
        states = self.engine.states()
        for name, g in self.engine.groups.items():
            if g.alarm == (name in self.alarms):
                continue
            if g.alarm:
                self.alarms.add(name)
                unmet = [
                    f"{p.name}: " + ", ".join(f"{t} {states.get(t, State.UNKNOWN)}" for t in bad)
                    for p in g.spec.paths
                    if (bad := [t for t in p.requires if states.get(t) is not State.UP])
                ]
                keep = "-" if g.active is None else str(g.active)
                self.log.error("route group has no path", group=name, kept=keep, unmet=unmet)
            else:
                self.alarms.discard(name)
                self.log.warning("route group has a path again", group=name)

    def takeover(self, c: TakeoverChange) -> None:
        alarm = c.result.startswith("refused") or c.result in ("taken", "lost")
        log = self.log.error if alarm else self.log.warning
        log(
            "takeover",
            peer=c.peer,
            old=c.old.value,
            new=c.new.value,
            result=c.result or None,
            reason=c.reason,
        )

    def fence(self, f: Fence) -> None:
        if f.on:
            self.log.error("fenced: keeping own routing, claiming nothing", reason=f.reason)
        else:
            lasted = round(f.at - f.since, 1)
            self.log.warning("fence ended", reason=f.reason, fenced_s=lasted)

    def report(self, r: ApplyReport) -> None:
        if not r.ok:
            self.log.error(
                "actuator failed, will retry",
                actuator=r.actuator,
                reason=r.error_reason,
                error=r.error,
                attempt=r.attempt,
                groups=sorted(r.failed_groups) or "all",
            )
        elif r.trigger == "drift" and r.changed:
            self.log.warning("routing drifted and was re-applied", actuator=r.actuator)
