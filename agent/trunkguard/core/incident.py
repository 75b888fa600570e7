"""Incidents: what failed, what it did to routing, from when to when (pure).

Fed each batch of the core's events. A trunk, link, peer site or call check going down,
or the site evacuating, opens an incident keyed by what failed; the route decisions of
the same batch (or later ones of the groups that need it) are its impact, and a group
left without a path makes it critical. It closes when what failed is back. Maintenance
and anything labelled `drill` open nothing: those are intended.

Severity: `minor` (nothing moved: a backup failed), `major` (routing moved), `critical`
(a route group has no path, or the site is evacuating).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trunkguard.core.events import (
    Decision,
    DecisionKind,
    Event,
    SiteChange,
    SiteState,
    State,
    Transition,
)
from trunkguard.core.ids import Kind
from trunkguard.core.policy import GroupPolicy

SEVERITIES = ("minor", "major", "critical")
KINDS = ("trunk", "link", "peer", "call", "site")
EVIDENCE_MAX = 20  # lines kept per incident: a flapping trunk must not grow it forever
CLOSED_KEPT = 20
_MOVED = (DecisionKind.FAILOVER, DecisionKind.EVACUATE, DecisionKind.TAKEOVER)


@dataclass
class Incident:
    id: str
    key: str  # what failed: "trunk:carrier-a", "site"
    kind: str
    cause: str
    opened: float
    severity: str = "minor"
    impact: dict[str, str] = field(default_factory=dict)  # group -> "a → b", "no path"
    evidence: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=EVIDENCE_MAX))
    updated: float = 0.0
    closed: float | None = None
    revision: int = 0

    def escalate(self, severity: str) -> None:
        if SEVERITIES.index(severity) > SEVERITIES.index(self.severity):
            self.severity = severity

    def doc(self, wall: Callable[[float], str]) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": "open" if self.closed is None else "closed",
            "key": self.key,
            "kind": self.kind,
            "severity": self.severity,
            "cause": self.cause,
            "impact": dict(self.impact),
            "opened": wall(self.opened),
            "updated": wall(self.updated),
            "closed": None if self.closed is None else wall(self.closed),
            "duration_s": None if self.closed is None else round(self.closed - self.opened, 3),
            "evidence": [f"{wall(at)} {text}" for at, text in self.evidence],
            "revision": self.revision,
        }


class Tracker:
    def __init__(self, new_id: Callable[[float, str], str]) -> None:
        self.new_id = new_id  # (opened at, key) -> a unique id
        self.open: dict[str, Incident] = {}
        self.closed: deque[Incident] = deque(maxlen=CLOSED_KEPT)

    def open_ids(self) -> list[str]:
        return [i.id for i in self.open.values()]

    def feed(
        self, events: Sequence[Event], now: float, groups: Mapping[str, GroupPolicy]
    ) -> list[Incident]:
        """The incidents this batch opened, changed or closed (revision moved on)."""
        changed: dict[str, Incident] = {}
        new: list[Incident] = []
        moved = False  # only these events can leave a group without a path
        for ev in events:
            if isinstance(ev, Transition):
                self._transition(ev, new, changed)
            elif isinstance(ev, SiteChange):
                self._site(ev, new, changed)
            elif isinstance(ev, Decision):
                self._decision(ev, new, groups, changed)
            else:
                continue
            moved = True
        for name, g in groups.items() if moved and self.open else ():
            if g.alarm:
                for inc in self._related(name, groups, new):
                    if inc.impact.get(name) != "no path":
                        inc.impact[name] = "no path"
                        inc.escalate("critical")
                        changed[inc.id] = inc
        for inc in changed.values():
            inc.updated, inc.revision = now, inc.revision + 1
        return list(changed.values())

    def _open(self, key: str, kind: str, cause: str, at: float, new: list[Incident]) -> Incident:
        inc = Incident(self.new_id(at, key), key, kind, cause, at, updated=at)
        self.open[key] = inc
        new.append(inc)
        return inc

    def _close(self, inc: Incident, at: float, why: str) -> None:
        inc.closed = at
        inc.evidence.append((at, why))
        del self.open[inc.key]
        self.closed.append(inc)

    def _transition(self, t: Transition, new: list[Incident], changed: dict[str, Incident]) -> None:
        if t.target.dest or t.target.kind.value not in KINDS:
            return
        key, kind = str(t.target), t.target.kind.value
        # A site gone is major whatever it does to our routing.
        opens = "major" if t.target.kind is Kind.PEER else "minor"
        line = f"{key} {t.old} → {t.new}: {t.reason}"
        down, up = t.new is State.DOWN and not t.drill, t.new is State.UP
        self._track(key, kind, f"{key} down: {t.reason}", opens, down, up, t.at, line, new, changed)

    def _site(self, c: SiteChange, new: list[Incident], changed: dict[str, Incident]) -> None:
        line = f"site {c.old} → {c.new}: {c.reason}"
        down = c.new is SiteState.EVACUATING and not c.drill
        cause = f"site evacuating: {c.reason}"
        up = c.new is SiteState.NORMAL
        self._track("site", "site", cause, "critical", down, up, c.at, line, new, changed)

    def _track(
        self,
        key: str,
        kind: str,
        cause: str,
        severity: str,
        opens: bool,
        closes: bool,
        at: float,
        line: str,
        new: list[Incident],
        changed: dict[str, Incident],
    ) -> None:
        """Open the incident of `key` (if `opens` and none is), close it (`closes`), or
        add the line to its evidence."""
        inc = self.open.get(key)
        if opens and inc is None:
            inc = self._open(key, kind, cause, at, new)
            inc.escalate(severity)
        if inc is None:
            return
        if closes:
            self._close(inc, at, line)
        else:
            inc.evidence.append((at, line))
        changed[inc.id] = inc

    def _decision(
        self,
        d: Decision,
        new: list[Incident],
        groups: Mapping[str, GroupPolicy],
        changed: dict[str, Incident],
    ) -> None:
        if d.kind is DecisionKind.INITIAL:
            return
        moved = f"{d.old or '-'} → {d.new}"
        for inc in self._related(d.group, groups, new):
            inc.impact[d.group] = moved if d.kind in _MOVED else f"{moved} ({d.kind})"
            inc.evidence.append((d.at, f"route group {d.group}: {moved} ({d.kind}: {d.reason})"))
            if d.kind in _MOVED:
                inc.escalate("major")
            changed[inc.id] = inc

    def _related(
        self, group: str, groups: Mapping[str, GroupPolicy], new: list[Incident]
    ) -> list[Incident]:
        """The incidents a group's change belongs to: those opened in this batch, else
        the open ones about something the group's paths need (or the site's)."""
        if new:
            return new
        g = groups.get(group)
        needs = set() if g is None else {str(t) for t in g.spec.targets}
        return [i for k, i in self.open.items() if k in needs or k == "site"]
