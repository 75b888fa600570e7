"""Reroute latency: from the evidence behind a decision to every actuator applying it.

A decision waits until each actuator has reported it applied (or has no actuators);
then `Applied` is published with both durations, logged and observed as
trunkguard_reroute_seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from structlog.typing import FilteringBoundLogger

from trunkguard.act.converge import ApplyReport
from trunkguard.core.events import Decision
from trunkguard.core.ids import Paths
from trunkguard.hub import Hub
from trunkguard.obs.metrics import Metrics


@dataclass(frozen=True, slots=True)
class Applied:
    """A decision is in place everywhere."""

    group: str
    paths: Paths
    at: float
    apply_s: float  # decision to applied
    reroute_s: float  # evidence to applied


@dataclass
class _Pending:
    paths: Paths
    cause_at: float
    decided_at: float
    waiting: set[str] = field(default_factory=set)


class LatencySink:
    def __init__(self, hub: Hub, metrics: Metrics, log: FilteringBoundLogger) -> None:
        self.hub, self.metrics, self.log = hub, metrics, log
        self.pending: dict[str, _Pending] = {}
        hub.subscribe(Decision, self.decision)
        hub.subscribe(ApplyReport, self.report)

    def decision(self, d: Decision) -> None:
        names = {c.actuator.name for c in self.hub.convergers}
        self.pending[d.group] = _Pending(d.new, d.cause_at, d.at, names)
        if not names:
            self._applied(d.group, d.at)

    def report(self, r: ApplyReport) -> None:
        if not r.ok and not r.failed_groups:
            return  # nothing of it is known to be in place
        for group, pend in list(self.pending.items()):
            if group in r.failed_groups:
                continue  # the others were applied even though this one failed
            if r.desired.get(group) == pend.paths:
                pend.waiting.discard(r.actuator)
                if not pend.waiting:
                    self._applied(group, r.finished_at)

    def _applied(self, group: str, at: float) -> None:
        pend = self.pending.pop(group)
        reroute = max(at - pend.cause_at, 0.0)
        self.metrics.reroute_seconds.labels(group=group).observe(reroute)
        apply_s = at - pend.decided_at
        self.log.info(
            "route applied",
            group=group,
            path=str(pend.paths),
            apply_ms=round(apply_s * 1000, 2),
            reroute_ms=round(reroute * 1000, 1),
        )
        self.hub.publish(Applied(group, pend.paths, at, apply_s, reroute))
