"""Prometheus: the core's events and the actuators' reports as metrics."""

from __future__ import annotations

from collections.abc import Sequence

from trunkguard.act.converge import ApplyReport
from trunkguard.core.engine import Engine
from trunkguard.core.events import (
    Decision,
    DecisionKind,
    DestTransition,
    Event,
    Fence,
    Level,
    Outcome,
    ProbeOutcome,
    SensorChange,
    SensorFault,
    SensorReading,
    SiteChange,
    SiteState,
    State,
    TakeoverChange,
    Transition,
)
from trunkguard.core.ids import Kind, TargetId
from trunkguard.hub import Hub
from trunkguard.obs.metrics import Metrics

STATES = [s.value for s in State]
LEVELS = [lv.value for lv in Level]


def down_cause(t: Transition, deps_down: bool, probe: ProbeOutcome | None) -> str:
    """Why a trunk is not up, in a few words (a bounded label, for alert routing)."""
    if t.new is State.MAINTENANCE:
        return "maintenance"
    if deps_down:
        return "dependency"
    if probe is None:
        return "unknown"
    if probe.reason is Outcome.RESPONSE and probe.code is not None:
        return f"status_{probe.code // 100}xx"
    return probe.reason.value


class MetricsSink:
    def __init__(self, hub: Hub, metrics: Metrics) -> None:
        self.m, self.engine, self.hub = metrics, hub.engine, hub
        self.causes: dict[TargetId, str] = {}  # the cause label each down trunk has now
        hub.subscribe(Transition, self.transition)
        hub.subscribe(DestTransition, self.dest_transition)
        hub.subscribe(SensorChange, self.sensor_change)
        hub.subscribe(SensorReading, self.reading)
        hub.subscribe(SensorFault, self.fault)
        hub.subscribe(SiteChange, self.site)
        hub.subscribe(Decision, self.decision)
        hub.subscribe(TakeoverChange, self.takeover)
        hub.subscribe(Fence, self.fence)
        hub.subscribe(ApplyReport, self.report)
        hub.after_each(self.batch)
        self.configured(hub.engine)

    def configured(self, engine: Engine) -> None:
        """Export what the core knows from the start (and after a reload)."""
        for name, sh in engine.sensors.items():
            if sh.level is Level.UNKNOWN:
                self.m.set_sensor_state(name, Level.UNKNOWN.value, LEVELS)
        for tid in engine.peers:
            self.m.peer_up.labels(tid.name)  # 0 until the first heartbeat
        for peer, tk in engine.takeovers.items():
            self.m.takeover_active.labels(peer).set(1 if tk.serving else 0)
            for result in ("taken", "refused_partition", "refused_quorum"):
                self.m.takeovers_total.labels(peer, result)

    def transition(self, t: Transition) -> None:
        kind, name = t.target.kind.value, t.target.name
        self.m.set_target_state(kind, name, t.new.value, STATES)
        self.m.target_up.labels(kind=kind, name=name).set(1 if t.new is State.UP else 0)
        self.m.transitions_total.labels(kind=kind, name=name, to=t.new.value).inc()
        if t.target.kind is Kind.PEER:
            self.m.peer_up.labels(name).set(1 if t.new is State.UP else 0)
        if t.target.kind is Kind.TRUNK:
            self._cause(t)

    def _cause(self, t: Transition) -> None:
        kind, name = t.target.kind.value, t.target.name
        old = self.causes.pop(t.target, None)
        if old is not None:
            self.m.target_down_cause.remove(kind, name, old)
        if t.new in (State.DOWN, State.MAINTENANCE):
            th = self.engine.targets.get(t.target)
            cause = down_cause(t, bool(th and th.deps_down), self.hub.probes.get(t.target))
            self.m.target_down_cause.labels(kind, name, cause).set(1)
            self.causes[t.target] = cause

    def dest_transition(self, t: DestTransition) -> None:
        up = 1 if t.new is State.UP else 0
        self.m.trunk_target_up.labels(t.target.name, t.target.dest).set(up)

    def sensor_change(self, c: SensorChange) -> None:
        self.m.set_sensor_state(c.sensor, c.new.value, LEVELS)

    def reading(self, r: SensorReading) -> None:
        sh = self.engine.sensors[r.sensor]
        self.m.sensor_value.labels(sensor=r.sensor).set(float(r.value))
        if sh.spec.critical is not None and sh.spec.kind == "number":
            ttc = sh.time_to_critical(r.at)
            inf = float("inf") if ttc is None else ttc
            self.m.sensor_time_to_critical_seconds.labels(sensor=r.sensor).set(inf)
        rate = sh.rate_per_minute()
        if rate is not None:
            self.m.sensor_rate_per_minute.labels(sensor=r.sensor).set(rate)

    def fault(self, f: SensorFault) -> None:
        self.m.sensor_read_errors_total.labels(sensor=f.sensor).inc()

    def site(self, c: SiteChange) -> None:
        evacuating = c.new is SiteState.EVACUATING
        self.m.site_evacuating.set(1 if evacuating else 0)
        if evacuating:
            self.m.evacuations_total.labels(cause="operator" if c.forced else "rule").inc()

    def decision(self, d: Decision) -> None:
        g = self.engine.groups[d.group]
        self.m.set_active_path(d.group, [p.name for p in g.spec.paths], d.new)
        if d.drill:
            return  # counted in trunkguard_drills_total: a drill must not page anyone
        if d.kind is DecisionKind.FAILOVER:
            self.m.failovers_total.labels(group=d.group).inc()
        elif d.kind is DecisionKind.FAILBACK:
            self.m.failbacks_total.labels(group=d.group).inc()

    def takeover(self, c: TakeoverChange) -> None:
        if c.result:
            self.m.takeovers_total.labels(c.peer, c.result).inc()
        self.m.takeover_active.labels(c.peer).set(1 if self.engine.takeovers[c.peer].serving else 0)

    def fence(self, f: Fence) -> None:
        self.m.fenced.set(1 if f.on else 0)

    def batch(self, events: Sequence[Event]) -> None:
        states = self.engine.states()
        for name, g in self.engine.groups.items():
            self.m.route_no_path.labels(group=name).set(1 if g.alarm else 0)
            for p in g.spec.paths:
                if p.verified_by is not None:
                    silent = g.silent(p, states)
                    self.m.path_silent_failure.labels(name, p.name).set(1 if silent else 0)

    def report(self, r: ApplyReport) -> None:
        m, name = self.m, r.actuator
        m.actuator_converged.labels(actuator=name).set(1 if r.ok else 0)
        m.actuator_apply_seconds.labels(actuator=name).observe(r.finished_at - r.started_at)
        if not r.ok:
            m.actuator_errors_total.labels(actuator=name, reason=r.error_reason or "error").inc()
