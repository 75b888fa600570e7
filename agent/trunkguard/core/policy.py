"""Route-group policy: which path is active, given target states and time.

Pure: the shell passes the current target states and the time; the policy returns
a Decision when the active path must change, and says when it next needs to be
asked (a pending auto-failback).

Rules:
- A path qualifies when every target it requires is up.
- Until every target the group depends on has a first verdict, nothing is decided:
  a restart never flaps routing.
- The active path is kept while it qualifies. If it stops qualifying, the most
  preferred qualifying path takes over at once (failover).
- A more preferred path than the active one takes over only when `failback` is
  "auto" and it has qualified continuously for `hold` (failback); with "manual"
  only an operator's `failback` command moves back.
- When no path qualifies, the last path is kept (there is nothing better to do)
  and the group is in alarm.
- An operator may pin a path (`failover GROUP PATH`); the pin holds while that
  path qualifies and is dropped, with a reason, when it stops qualifying.
- In `multipath` mode every qualifying path is active at once (the desired value
  lists their names in preference order) so traffic is spread across the
  healthy carriers: a path leaves at once when it stops qualifying and joins after
  `hold` (auto) or on the operator's failback (manual). If none of the active ones is
  left, whatever qualifies takes over at once.
- While the site is evacuating, only paths marked `remote` count (groups without
  any remote path are left alone). When the evacuation ends the group returns to
  its best path at once: the site's own hold already proved the site is fit.
- A path that `serves` a peer site qualifies only while this agent has taken over
  that peer's calls, and then it comes first (at once, like an evacuation). When the
  takeover is released the group returns to its best path at once: the takeover's
  own hold already proved the peer is back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from trunkguard.core.events import Decision, DecisionKind, State
from trunkguard.core.ids import Paths, TargetId

States = Mapping[TargetId, State]


class Failback(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


class GroupMode(StrEnum):
    FAILOVER = "failover"
    MULTIPATH = "multipath"


@dataclass(frozen=True, slots=True)
class PathSpec:
    name: str
    requires: tuple[TargetId, ...] = ()
    remote: bool = False
    serves: str | None = None  # a peer site whose calls this path takes over
    verified_by: TargetId | None = None  # a call check proving the path (reported only)


@dataclass(frozen=True, slots=True)
class GroupSpec:
    name: str
    paths: tuple[PathSpec, ...]
    failback: Failback = Failback.AUTO
    hold: float = 30.0
    mode: GroupMode = GroupMode.FAILOVER

    def __post_init__(self) -> None:
        # Accept the words as well as the enums (config and tests say "auto").
        object.__setattr__(self, "failback", Failback(self.failback))
        object.__setattr__(self, "mode", GroupMode(self.mode))

    @property
    def targets(self) -> frozenset[TargetId]:
        return frozenset(t for p in self.paths for t in p.requires)


@dataclass(slots=True)
class GroupPolicy:
    spec: GroupSpec
    active: Paths | None = None
    alarm: bool = False
    pinned: str | None = None
    ready: bool = False  # every target has a verdict: the active path may be enforced
    evacuated: bool = False  # the active choice was made among remote paths only
    took_over: bool = False  # the active choice was made among serving paths only
    serving: frozenset[str] = frozenset()  # peer sites this agent has taken over
    waiting: bool = True  # the last evaluation lacked a verdict: no timer is meaningful
    qualified_since: dict[str, float] = field(default_factory=dict)

    def qualifies(self, path: PathSpec, states: States) -> bool:
        """Every target it requires is up (and, serving a peer, the peer is taken over)."""
        if path.serves is not None and path.serves not in self.serving:
            return False
        return all(states.get(t) is State.UP for t in path.requires)

    def silent(self, path: PathSpec, states: States) -> bool:
        """The silent backup: the path qualifies by its probes, but the call check
        that proves it fails."""
        return (
            path.verified_by is not None
            and self.qualifies(path, states)
            and states.get(path.verified_by) is State.DOWN
        )

    def _narrow(self, ok: list[PathSpec], evac: bool) -> list[PathSpec]:
        """Remote paths only while evacuating; serving paths first while taking over."""
        if evac:
            ok = [p for p in ok if p.remote]
        served = [p for p in ok if p.serves is not None]
        return served or ok

    def _index(self, name: str | None) -> int:
        for i, p in enumerate(self.spec.paths):
            if p.name == name:
                return i
        return len(self.spec.paths)

    def _track(self, states: States, now: float, cause_at: float) -> list[PathSpec]:
        """Update per-path 'qualifying since' and return the qualifying paths in order."""
        ok: list[PathSpec] = []
        for p in self.spec.paths:
            if self.qualifies(p, states):
                self.qualified_since.setdefault(p.name, min(now, cause_at))
                ok.append(p)
            else:
                self.qualified_since.pop(p.name, None)
        return ok

    def evaluate(
        self,
        states: States,
        now: float,
        cause_at: float | None = None,
        evacuate: str | None = None,
        serving: frozenset[str] | None = None,
    ) -> Decision | None:
        """Re-evaluate after a state change (cause_at = when it was observed) or a timer.

        `evacuate` is the reason the site is evacuating, None when it is not; `serving`
        the peer sites taken over (None: unchanged)."""
        cause = now if cause_at is None else cause_at
        if serving is not None:
            self.serving = serving
        self.waiting = any(states.get(t, State.UNKNOWN) is State.UNKNOWN for t in self.spec.targets)
        if self.waiting:
            return None
        self.ready = True
        ok = self._track(states, now, cause)
        evac = evacuate is not None and any(p.remote for p in self.spec.paths)
        ok = self._narrow(ok, evac)
        took = bool(ok) and ok[0].serves is not None
        returning, self.evacuated = self.evacuated and not evac, evac
        released, self.took_over = self.took_over and not took, took
        names = [p.name for p in ok]
        self.alarm = not ok
        if not ok:
            return None
        best = ok[0].name

        if self.pinned is not None:
            if self.pinned in names:
                return self._switch(
                    self.pinned, now, cause, DecisionKind.MANUAL, "pinned by operator"
                )
            dropped, self.pinned = self.pinned, None
            if evac:
                return self._switch(
                    best, now, cause, DecisionKind.EVACUATE, f"site evacuating: {evacuate}"
                )
            reason = f"pinned path {dropped} stopped qualifying"
            return self._switch(best, now, cause, DecisionKind.FAILOVER, reason)

        if self.spec.mode is GroupMode.MULTIPATH:
            if returning:
                return self._switch(
                    Paths.of(names), now, cause, DecisionKind.RETURN, "site evacuation over"
                )
            return self._multipath(names, now, cause, evacuate if evac else None)
        if self.active is None:
            return self._switch(best, now, cause, DecisionKind.INITIAL, "first verdicts in")
        if evac and self.current not in names:
            return self._switch(
                best, now, cause, DecisionKind.EVACUATE, f"site evacuating: {evacuate}"
            )
        if took and self.current not in names:
            why = f"taking over {ok[0].serves}'s calls"
            return self._switch(best, now, cause, DecisionKind.TAKEOVER, why)
        if returning:
            return self._switch(best, now, cause, DecisionKind.RETURN, "site evacuation over")
        if released:
            why = "takeover released: the peer is back"
            return self._switch(best, now, cause, DecisionKind.RELEASE, why)
        if self.current not in names:
            return self._switch(
                best, now, cause, DecisionKind.FAILOVER, f"{self.current} lost: {self._why(states)}"
            )
        if best != self.current and self.spec.failback is Failback.AUTO:
            due = self._failback_due(best)
            if due is not None and now >= due:
                reason = f"{best} stable for {self.spec.hold:g}s"
                return self._switch(best, now, due, DecisionKind.FAILBACK, reason)
        return None

    def _multipath(
        self, names: list[str], now: float, cause: float, evacuate: str | None
    ) -> Decision | None:
        current = set(self.members())
        keep = [n for n in names if n in current]
        if not keep:
            kind = DecisionKind.INITIAL if self.active is None else DecisionKind.FAILOVER
            why = "first verdicts in" if self.active is None else "no active path left"
            if evacuate is not None and self.active is not None:
                kind, why = DecisionKind.EVACUATE, f"site evacuating: {evacuate}"
            return self._switch(Paths.of(names), now, cause, kind, why)
        joining = [
            n
            for n in names
            if n not in current
            and self.spec.failback is Failback.AUTO
            and (due := self._failback_due(n)) is not None
            and now >= due
        ]
        new = [n for n in names if n in keep or n in joining]
        if joining:
            why = f"{', '.join(joining)} stable for {self.spec.hold:g}s"
            return self._switch(Paths.of(new), now, now, DecisionKind.FAILBACK, why)
        if len(new) < len(current):
            if evacuate is not None:
                why = f"site evacuating: {evacuate}"
                return self._switch(Paths.of(new), now, cause, DecisionKind.EVACUATE, why)
            gone = ", ".join(sorted(current - set(new)))
            return self._switch(Paths.of(new), now, cause, DecisionKind.FAILOVER, f"{gone} lost")
        return None

    def respec(self, spec: GroupSpec) -> GroupPolicy:
        """New settings on reload: keep what still exists, decide afresh what does not."""
        names = {p.name for p in spec.paths}
        self.spec = spec
        if self.pinned not in names:
            self.pinned = None
        if self.active is not None and not set(self.active) <= names:
            self.active, self.ready = None, False  # decided on the next evaluation
        self.qualified_since = {k: v for k, v in self.qualified_since.items() if k in names}
        return self

    def restore(self, active: Paths | None, pinned: str | None) -> None:
        """After a restart: the last decision, enforced once every target has a verdict."""
        names = {p.name for p in self.spec.paths}
        if active and set(active) <= names:
            self.active = active
        if pinned in names:
            self.pinned = pinned

    @property
    def current(self) -> str | None:
        """The active path of a failover group (the most preferred one in multipath)."""
        return self.active[0] if self.active else None

    def members(self) -> Paths:
        """The active paths: one, or several in multipath mode."""
        return Paths() if self.active is None else self.active

    def _why(self, states: States) -> str:
        path = self.spec.paths[self._index(self.current)]
        bad = [
            f"{t} {states.get(t, State.UNKNOWN)}"
            for t in path.requires
            if states.get(t) is not State.UP
        ]
        return ", ".join(bad) or "requirements no longer hold"

    def _failback_due(self, best: str) -> float | None:
        since = self.qualified_since.get(best)
        return None if since is None else since + self.spec.hold

    def next_wakeup(self) -> float | None:
        """When evaluate() must run again for a pending auto failback, if any."""
        if (
            self.waiting
            or self.active is None
            or self.pinned is not None
            or self.spec.failback is not Failback.AUTO
        ):
            return None
        if self.spec.mode is GroupMode.MULTIPATH:
            members = set(self.members())
            dues = [
                due
                for p in self.spec.paths
                if p.name not in members
                and (p.remote or not self.evacuated)
                and (due := self._failback_due(p.name)) is not None
            ]
            return min(dues, default=None)
        active_i = self._index(self.current)
        for p in self.spec.paths[:active_i]:
            if (
                p.name in self.qualified_since
                and (p.remote or not self.evacuated)
                and (p.serves is not None or not self.took_over)
            ):
                return self._failback_due(p.name)
        return None

    def pin(
        self, path: str, states: States, now: float, evacuate: str | None = None
    ) -> Decision | None:
        """Operator failover to `path`. Raises ValueError when it cannot be honoured."""
        spec = next((p for p in self.spec.paths if p.name == path), None)
        if spec is None:
            raise ValueError(f"group {self.spec.name} has no path {path!r}")
        if spec.serves is not None and spec.serves not in self.serving:
            raise ValueError(f"path {path} serves {spec.serves}, which is not taken over")
        if self.took_over and spec.serves is None:
            raise ValueError(f"path {path} is local and this site is serving a peer's calls")
        if not self.qualifies(spec, states):
            bad = [str(t) for t in spec.requires if states.get(t) is not State.UP]
            raise ValueError(f"path {path} does not qualify: {', '.join(bad)} not up")
        if evacuate is not None and not spec.remote and any(p.remote for p in self.spec.paths):
            raise ValueError(f"path {path} is local and the site is evacuating ({evacuate})")
        self.pinned = path
        return self.evaluate(states, now, evacuate=evacuate)

    def release(self, states: States, now: float) -> Decision | None:
        """Operator failback: drop any pin and move to the best path now, skipping hold."""
        self.pinned = None
        if any(states.get(t, State.UNKNOWN) is State.UNKNOWN for t in self.spec.targets):
            return None
        ok = self._narrow(self._track(states, now, now), self.evacuated)
        self.alarm = not ok
        if not ok:
            return None
        best = Paths.of(p.name for p in ok) if self.spec.mode is GroupMode.MULTIPATH else ok[0].name
        return self._switch(best, now, now, DecisionKind.MANUAL, "failback by operator")

    def _switch(
        self, new: str | Paths, now: float, cause: float, kind: DecisionKind, reason: str
    ) -> Decision | None:
        paths = new if isinstance(new, Paths) else Paths((new,))
        if paths == self.active:
            return None
        d = Decision(self.spec.name, self.active, paths, now, kind, reason, cause)
        self.active = paths
        return d
