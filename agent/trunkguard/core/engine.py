"""The core as one object: target health machines, sensors, the site and route groups.

Pure: every method takes the time; nothing here does I/O. The shell feeds it
observations and operator commands and hands the returned events to its sinks;
`desired()` is what the actuators converge to. The shell reads the core through
the read-only mappings below and keeps intent across restarts with intent() and
restore(); nothing outside the core assigns its fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from trunkguard.core.events import (
    Decision,
    DestTransition,
    Event,
    Fence,
    SensorChange,
    SensorFault,
    SensorReading,
    SiteChange,
    SiteState,
    State,
    TakeoverChange,
    TakeoverState,
    Transition,
    Verdict,
)
from trunkguard.core.health import HealthParams
from trunkguard.core.ids import Kind, Paths, TargetId, parse_target
from trunkguard.core.link import LinkHealth, LinkParams
from trunkguard.core.peer import PeerBeat, PeerHealth, PeerSpec, PeerStatus
from trunkguard.core.policy import GroupPolicy, GroupSpec
from trunkguard.core.sensor import Reading, SensorHealth, SensorSpec
from trunkguard.core.site import SitePolicy, SiteSpec, evaluate
from trunkguard.core.takeover import Context, QuorumMode, Takeover, TakeoverSpec, Voting
from trunkguard.core.trunk import SINGLE, Quorum, TrunkHealth

_DEP_DOWN = (State.DOWN, State.MAINTENANCE)
NOTHING: Sequence[Event] = ()  # the answer to almost every probe: no allocation
_NO_SESSION = "no broker session yet"
DRILL = "drill"  # who a drill's injections are by: labelled everywhere, never persisted


@dataclass(frozen=True, slots=True)
class TrunkSpec:
    """Everything the core needs to know about one trunk."""

    params: HealthParams = field(default_factory=HealthParams)
    quorum: Quorum = field(default_factory=Quorum)
    depends_on: tuple[TargetId, ...] = ()  # links it is reached through


@dataclass
class CoreSpec:
    """What the core watches and decides; each feature fills in its part."""

    trunks: dict[TargetId, TrunkSpec] = field(default_factory=dict)
    links: dict[TargetId, LinkParams] = field(default_factory=dict)
    sensors: dict[str, SensorSpec] = field(default_factory=dict)
    site: SiteSpec = field(default_factory=SiteSpec)
    groups: list[GroupSpec] = field(default_factory=list)
    peers: dict[TargetId, PeerSpec] = field(default_factory=dict)
    takeovers: dict[str, TakeoverSpec] = field(default_factory=dict)  # by peer site
    voting: Voting = field(default_factory=Voting)
    heartbeat_expiry: float = 3.0  # our own: how long our echo may be missing
    session: bool = False  # there is an MQTT session (peers, fencing) to wait for


@dataclass(frozen=True)
class Intent:
    """What must survive a restart: routing as last decided and the operator's wishes."""

    active: Mapping[str, Paths] = field(default_factory=dict)
    pinned: Mapping[str, str] = field(default_factory=dict)
    maintenance: frozenset[TargetId] = frozenset()
    evacuating: bool = False
    evacuation_forced: bool = False
    takeovers: frozenset[str] = frozenset()  # peer sites whose calls we serve


class Engine:
    def __init__(self, spec: CoreSpec, now: float = 0.0) -> None:
        self._targets: dict[TargetId, TrunkHealth] = {}
        self._links: dict[TargetId, LinkHealth] = {}
        self._sensors: dict[str, SensorHealth] = {}
        self._groups: dict[str, GroupPolicy] = {}
        self._site = SitePolicy(SiteSpec())
        self._peers: dict[TargetId, PeerHealth] = {}
        self._takeovers: dict[str, Takeover] = {}
        # Our own MQTT session, for fencing: None until the shell says it has one.
        self._connected: bool | None = None
        self._epoch = 0
        self._echo_until: float | None = None
        self._fenced: str | None = None
        self._fenced_since = now
        self._now = now  # the latest time the shell passed in (for next_wakeup)
        # A drill's injections: targets it put in maintenance, sensors it simulates
        # (with their health before), an evacuation it caused. None of it is intent: a
        # crash mid-drill must not bring the drill back after a restart.
        self._drilled: set[TargetId] = set()
        self._sensors_before: dict[str, SensorHealth] = {}
        self._site_drill = False
        self.reconfigure(spec, now)

    # ---- read-only view ---------------------------------------------------------------

    @property
    def targets(self) -> Mapping[TargetId, TrunkHealth]:
        return MappingProxyType(self._targets)

    @property
    def links(self) -> Mapping[TargetId, LinkHealth]:
        return MappingProxyType(self._links)

    @property
    def sensors(self) -> Mapping[str, SensorHealth]:
        return MappingProxyType(self._sensors)

    @property
    def groups(self) -> Mapping[str, GroupPolicy]:
        return MappingProxyType(self._groups)

    @property
    def site(self) -> SitePolicy:
        return self._site

    @property
    def peers(self) -> Mapping[TargetId, PeerHealth]:
        return MappingProxyType(self._peers)

    @property
    def takeovers(self) -> Mapping[str, Takeover]:
        return MappingProxyType(self._takeovers)

    @property
    def fenced(self) -> str | None:
        """Why this agent is fenced (frozen: claims nothing), or None."""
        return self._fenced

    @property
    def epoch(self) -> int:
        return self._epoch

    def serving(self) -> frozenset[str]:
        return frozenset(p for p, t in self._takeovers.items() if t.serving)

    def states(self) -> Mapping[TargetId, State]:
        """Every target's state, live (no copy)."""
        return self._view

    def desired(self) -> dict[str, Paths]:
        return {n: g.active for n, g in self._groups.items() if g.ready and g.active is not None}

    def depends_on(self, target: TargetId) -> tuple[TargetId, ...]:
        """The links a trunk is reached through."""
        ts = self._spec.trunks.get(target)
        return () if ts is None else ts.depends_on

    def find_target(self, text: str) -> TargetId:
        """A target by its full name (trunk:x) or, when unambiguous, its bare name."""
        every = [*self._targets, *self._links]
        if ":" in text:
            tid = parse_target(text)
            if tid in every:
                return tid
            raise KeyError(f"unknown target {text!r}")
        matches = [t for t in every if t.name == text]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise KeyError(f"unknown target {text!r}")
        raise KeyError(f"ambiguous target {text!r}: use one of {', '.join(map(str, matches))}")

    # ---- configuration and intent -------------------------------------------------------

    def reconfigure(self, spec: CoreSpec, now: float = 0.0) -> Sequence[Event]:
        """Apply new settings, keeping what is known about what remains.

        Returns what the new settings changed at once (a dependency dropped or added)."""
        self._targets = {tid: self._trunk(tid, ts) for tid, ts in spec.trunks.items()}
        old_l, self._links = self._links, {}
        for tid, lp in spec.links.items():
            lh = old_l.get(tid) or LinkHealth(tid, lp)
            lh.reset(lp)
            self._links[tid] = lh
        old_s, self._sensors = self._sensors, {}
        for name, sspec in spec.sensors.items():
            sh = old_s.get(name) or SensorHealth(sspec, created=now)
            sh.reset(sspec)
            self._sensors[name] = sh
        self._site.spec = spec.site
        self._spec = spec
        if spec.session and self._connected is None:
            # Until the first connection we see no peer: fenced, quietly (nothing failed).
            self._connected, self._fenced = False, _NO_SESSION
        old_p, self._peers = self._peers, {}
        for tid, pspec in spec.peers.items():
            ph = old_p.get(tid)
            if ph is None or ph.spec != pspec:
                ph = PeerHealth(tid, pspec, listening_since=now)
                ph.connected = self._connected is not False
            self._peers[tid] = ph
        old_t, self._takeovers = self._takeovers, {}
        for peer, tspec in spec.takeovers.items():
            tk = old_t.get(peer) or Takeover(tspec)
            tk.spec, tk.voting = tspec, spec.voting
            self._takeovers[peer] = tk
        changed = self._wire_dependencies(spec, now)
        old_g, self._groups = self._groups, {}
        for gspec in spec.groups:
            gp = old_g.get(gspec.name)
            self._groups[gspec.name] = GroupPolicy(gspec) if gp is None else gp.respec(gspec)
        # Which groups a target feeds: a transition re-evaluates only those.
        self._groups_of: dict[TargetId, list[GroupPolicy]] = {}
        for gp in self._groups.values():
            for t in gp.spec.targets:
                self._groups_of.setdefault(t, []).append(gp)
        self._view = _States(self._targets, self._links, self._peers)
        return self._after(changed, now, now, site=True)

    def _trunk(self, tid: TargetId, ts: TrunkSpec) -> TrunkHealth:
        th = self._targets.get(tid)
        if th is None:
            th = TrunkHealth(tid, ts.params, ts.quorum)
            th.set_dests([SINGLE], 0.0)  # one fixed address until told otherwise
        elif th.params != ts.params or th.quorum != ts.quorum:
            th.reset(ts.params, ts.quorum)
        return th

    def _wire_dependencies(self, spec: CoreSpec, now: float) -> list[Transition]:
        """Trunks reached through links: a link going down takes them down at once."""
        self._dependants: dict[TargetId, list[TargetId]] = {}
        changed: list[Transition] = []
        for tid, th in self._targets.items():
            deps = spec.trunks[tid].depends_on
            for dep in deps:
                self._dependants.setdefault(dep, []).append(tid)
            for dep in list(th.deps_down):
                if dep not in deps or dep not in self._links:
                    tr = th.set_dependency(dep, False, now, "no longer a dependency")
                    changed += [tr] if tr else []
            for dep in deps:
                via = self._links.get(dep)
                if via is not None and via.state in _DEP_DOWN:
                    tr = th.set_dependency(dep, True, now, via.reason)
                    changed += [tr] if tr else []
        return changed

    def intent(self) -> Intent:
        return Intent(
            active={n: g.active for n, g in self._groups.items() if g.active},
            pinned={n: g.pinned for n, g in self._groups.items() if g.pinned},
            maintenance=frozenset(
                [
                    *(n for n, t in self._targets.items() if t.maintenance),
                    *(n for n, lh in self._links.items() if lh.maintenance),
                ]
            )
            - self._drilled,
            evacuating=self._site.evacuating is not None and not self._site_drill,
            evacuation_forced=self._site.forced and not self._site_drill,
            takeovers=self.serving(),
        )

    def restore(self, intent: Intent, now: float) -> None:
        """After a restart: what was decided is enforced once every target has a verdict."""
        for tid in intent.maintenance:
            h: TrunkHealth | LinkHealth | None = self._targets.get(tid) or self._links.get(tid)
            if h is not None:
                h.set_maintenance(True, now)
        self._site.restore(intent.evacuating, intent.evacuation_forced, now)
        for peer in intent.takeovers:
            if peer in self._takeovers:
                self._takeovers[peer].restore(now)
        for gname, g in self._groups.items():
            g.restore(intent.active.get(gname), intent.pinned.get(gname))
            g.serving = self.serving()

    # ---- observations -------------------------------------------------------------------

    def observe(self, v: Verdict, dest: str = SINGLE) -> Sequence[Event]:
        th = self._targets.get(v.target)
        if th is None:  # a late result from a target removed by a reload
            return NOTHING
        dt, t = th.observe(dest, v)
        if dt is None:
            return NOTHING
        # Without a trunk transition no group's inputs changed; timers are tick()'s job.
        events = self._after([t], v.at, v.at) if t else []
        if len(th.dests) > 1:
            events.insert(0, DestTransition(dt.target, dt.old, dt.new, dt.at, dt.reason))
        return events

    def set_dests(self, target: TargetId, keys: list[str], now: float) -> Sequence[Event]:
        """What a trunk resolves to now (a DNS answer, or its one fixed address)."""
        th = self._targets.get(target)
        t = None if th is None else th.set_dests(keys, now)
        return self._after([t], now, now) if t else NOTHING

    def observe_link(self, target: TargetId, up: bool, reason: str, at: float) -> Sequence[Event]:
        lh = self._links.get(target)
        t = None if lh is None else lh.observe(up, reason, at)
        return self._after([t], at, at) if t else NOTHING

    def observe_sensor(self, name: str, value: Reading, at: float) -> Sequence[Event]:
        sh = self._sensors.get(name)
        if sh is None:  # a late reading for a sensor removed by a reload
            return NOTHING
        if (before := self._sensors_before.get(name)) is not None:
            before.observe(value, at)  # a drill simulates it: kept for afterwards
            return NOTHING
        c = sh.observe(value, at)
        # Every reading can move a projection, so the site rule is asked each time.
        events: list[Event] = [SensorReading(name, value, at)]
        return events + self._after([], at, at, [c] if c else [], site=True)

    def drill_sensor(self, name: str, value: Reading | None, at: float) -> Sequence[Event]:
        """A drill's simulated reading, judged by the sensor's own rules and the site
        rule; real readings meanwhile update the health kept for afterwards. None ends
        it: the sensor is as it would have been, and an evacuation the drill caused
        ends at once (no `hold`) unless the rule holds for real."""
        sh = self._sensors.get(name)
        if sh is None:
            raise KeyError(f"unknown sensor {name!r}")
        if value is None:
            before = self._sensors_before.pop(name, None)
            if before is None:
                return NOTHING
            self._sensors[name] = before
            rule = self._site.spec.rule
            holding = None if rule is None else evaluate(rule, self._sensors, self._view, at)
            self._site.holding = holding
            c = None
            if holding is not None:
                self._site_drill = False  # the rule holds for real: a real evacuation now
            elif self._site_drill and not self._site.forced and not self._sensors_before:
                c = self._site.end(at, "drill ended: sensors read as before")
            return _drilled(self._after([], at, at, site=c is None, site_change=c))
        self._sensors_before.setdefault(name, sh.snapshot())
        sc = sh.observe(value, at)
        events: list[Event] = [SensorReading(name, value, at)]
        events += self._after([], at, at, [sc] if sc else [], site=True)
        if any(isinstance(ev, SiteChange) and ev.new is SiteState.EVACUATING for ev in events):
            self._site_drill = True
        return _drilled(events)

    def sensor_failed(self, name: str, error: str, at: float) -> Sequence[Event]:
        sh = self._sensors.get(name)
        if sh is None:
            return NOTHING
        sh.failed(error)
        return [SensorFault(name, error, at)]

    def observe_peer(self, msg: PeerStatus | PeerBeat, now: float) -> Sequence[Event]:
        """A peer's birth, death or heartbeat (parsed and bounded by the shell)."""
        ph = self._peers.get(TargetId(Kind.PEER, msg.site))
        if ph is None:
            return NOTHING
        t = ph.status(msg, now) if isinstance(msg, PeerStatus) else ph.beat(msg, now)
        if t is None and not isinstance(msg, PeerBeat):
            return NOTHING
        # A heartbeat also carries votes: takeovers are weighed again.
        return self._after([t] if t else [], now, now, peers=True)

    def claim(self, peer: str, who: str, epoch: int | None, now: float) -> Sequence[Event]:
        """Another agent ("site/node") claims (or withdraws its claim on) a peer's calls."""
        tk = self._takeovers.get(peer)
        if tk is None:
            return NOTHING
        tk.claim(who, epoch)
        return self._after([], now, now, peers=True)

    def session(self, connected: bool, epoch: int, now: float) -> Sequence[Event]:
        """Our own MQTT session came up (with its epoch) or went down."""
        if connected and not self._connected:
            self._echo_until = now + self._spec.heartbeat_expiry  # grace for the first echo
        self._connected, self._epoch = connected, epoch
        ts = [t for ph in self._peers.values() if (t := ph.set_connected(connected, now))]
        return self._after(ts, now, now, peers=True)

    def heard_self(self, ttl: float, now: float) -> Sequence[Event]:
        """Our own heartbeat came back through the broker: the path to peers works."""
        self._echo_until = now + ttl
        return self._after([], now, now, peers=True) if self._fenced else NOTHING

    def release(self, peer: str, now: float) -> Sequence[Event]:
        """Operator: end the takeover of a peer's calls now."""
        tk = self._takeovers.get(peer)
        if tk is None:
            raise KeyError(f"no takeover configured for peer {peer!r}")
        c = tk.release(now)
        return self._after([], now, now, takeovers=[c] if c else [])

    def tick(self, now: float) -> Sequence[Event]:
        """Run pending timers: link holds, stale sensors, site return, auto failback,
        peer heartbeats, fences and takeover holds."""
        ts = [t for lh in self._links.values() if (t := lh.tick(now)) is not None]
        ts += [t for ph in self._peers.values() if (t := ph.evaluate(now)) is not None]
        cs = [c for sh in self._sensors.values() if (c := sh.tick(now)) is not None]
        return self._after(ts, now, None, cs, site=True, all_groups=True, peers=True)

    def next_wakeup(self) -> float | None:
        times = [t for g in self._groups.values() if (t := g.next_wakeup()) is not None]
        times += [t for lh in self._links.values() if (t := lh.due()) is not None]
        times += [t for sh in self._sensors.values() if (t := sh.stale_at()) is not None]
        if (t := self._site.next_wakeup()) is not None:
            times.append(t)
        times += [t for ph in self._peers.values() if (t := ph.due(self._now)) is not None]
        for tk in self._takeovers.values():
            if (t := tk.next_wakeup(self._peer_since(tk))) is not None:
                times.append(t)
        if self._connected and self._echo_until is not None and not self._fenced:
            times.append(self._echo_until)
        return min(times, default=None)

    # ---- operator commands (raise KeyError/ValueError with a one-line reason) ----------

    def set_maintenance(
        self, target: TargetId, on: bool, now: float, by: str = "operator"
    ) -> Sequence[Event]:
        h: TrunkHealth | LinkHealth | None = self._targets.get(target) or self._links.get(target)
        if h is None:
            raise KeyError(f"unknown target {str(target)!r}")
        if by == DRILL and not on and target not in self._drilled:
            return NOTHING  # an operator took it over meanwhile: theirs to end
        t = h.set_maintenance(on, now, by)
        if on and by == DRILL:
            self._drilled.add(target)
        else:
            self._drilled.discard(target)
        events = self._after([t] if t else [], now, now)
        return _drilled(events) if by == DRILL else events

    def evacuate(self, on: bool, now: float, by: str = "operator") -> Sequence[Event]:
        """Operator (or drill) evacuation. Raises ValueError when `off` cannot be honoured."""
        if by == DRILL and not on and not self._site_drill:
            return NOTHING  # an operator forced it meanwhile: theirs to end
        c = self._site.force(on, now, by)
        self._site_drill = on and by == DRILL
        events = self._after([], now, now, site_change=c)
        return _drilled(events) if by == DRILL else events

    def failover(self, group: str, path: str, now: float) -> Sequence[Event]:
        d = self._group(group).pin(path, self._view, now, self._site.evacuating)
        return [d] if d else NOTHING

    def failback(self, group: str, now: float, by: str = "operator") -> Sequence[Event]:
        d = self._group(group).release(self._view, now)
        if d is None:
            return NOTHING
        return _drilled([d]) if by == DRILL else [d]

    def _group(self, name: str) -> GroupPolicy:
        g = self._groups.get(name)
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
        peers: bool = False,
        takeovers: list[TakeoverChange] | None = None,
    ) -> list[Event]:
        """Carry transitions on: to dependent trunks, the site rule, takeovers of peers,
        the route groups."""
        self._now = now
        for t in list(ts):
            for trunk in self._dependants.get(t.target, ()):
                down = t.new in _DEP_DOWN
                dt = self._targets[trunk].set_dependency(t.target, down, t.at, t.reason)
                if dt is not None:
                    ts.append(dt)
        events: list[Event] = [*ts, *(sensor_changes or ())]
        rule = self._site.spec.rule
        # Without a rule (removed by a reload) an evacuation still has to end.
        if site_change is None and (site or ts) and (rule or self._site.evacuating):
            holding = None if rule is None else evaluate(rule, self._sensors, self._view, now)
            site_change = self._site.evaluate(holding, now)
        if site_change is not None:
            events.append(site_change)
            if site_change.new is SiteState.NORMAL:
                self._site_drill = False
            all_groups, cause_at = True, site_change.at
        serving = None if takeovers else self.serving()  # an operator's release: changed
        if self._takeovers and (peers or ts or site_change or takeovers):
            events += self._weigh_takeovers(now, takeovers or [])
        elif self._connected is not None and peers:
            events += self._fence(now)
        if self.serving() != serving:
            all_groups = True
        groups: Iterable[GroupPolicy] = self._groups.values()
        if not all_groups:
            fed = {id(g) for t in ts for g in self._groups_of.get(t.target, ())}
            groups = [g for g in groups if id(g) in fed]  # config order, as before
        evac, serving = self._site.evacuating, self.serving()
        for g in groups:
            d = g.evaluate(self._view, now, cause_at, evac, serving)
            if d is not None:
                events.append(d)
        return events

    # ---- peers: fencing and takeovers ---------------------------------------------------

    def _fence(self, now: float) -> list[Event]:
        """Fence ourselves when we cannot see the broker or any other voter."""
        why: str | None = None
        voting = self._spec.voting
        if self._connected is False:
            why = _NO_SESSION if self._fenced == _NO_SESSION else "lost the broker"
        elif self._echo_until is not None and now >= self._echo_until:
            why = "own heartbeat not seen back through the broker"
        elif voting.quorum is QuorumMode.MAJORITY:
            others = [v for v in voting.voters if v != voting.me]
            seen = [
                v
                for v in others
                if (ph := self._peers.get(TargetId(Kind.PEER, v))) is not None
                and ph.state in (State.UP, State.EVACUATING)
            ]
            if others and not seen:
                why = f"cannot see any other voter ({', '.join(others)})"
        if (why is None) == (self._fenced is None):
            if why is not None:
                self._fenced = why  # still fenced, perhaps for another reason now
            return []
        since, self._fenced_since = self._fenced_since, now
        first, self._fenced = self._fenced == _NO_SESSION, why
        if first:
            return []
        if why is None:
            return [Fence(False, now, "broker, own heartbeat and voters seen again", since)]
        return [Fence(True, now, why, since)]

    def _peer_since(self, tk: Takeover) -> float:
        ph = self._peers.get(tk.spec.target)
        return self._now if ph is None else ph.since

    def _weigh_takeovers(self, now: float, done: list[TakeoverChange]) -> list[Event]:
        events: list[Event] = [*self._fence(now), *done]
        me = self._spec.voting.me
        for peer, tk in self._takeovers.items():
            ph = self._peers.get(tk.spec.target)
            votes = set()
            if ph is not None and ph.state is State.DOWN:
                votes.add(me)
            for v in tk.voting.voters:
                other = self._peers.get(TargetId(Kind.PEER, v))
                if v not in (me, peer) and other and other.sees(peer, now) is State.DOWN:
                    votes.add(v)
            ctx = Context(
                self._view,
                self._peer_since(tk),
                votes,
                self._fenced,
                self._site.evacuating is not None,
                self._epoch,
            )
            # A takeover can move twice at one instant (pending, then taken at once
            # when the fence already passed); bounded by its few states.
            for _ in range(3):
                c = tk.evaluate(ctx, now)
                if c is None:
                    break
                events.append(c)
                if c.old is c.new or c.new is TakeoverState.IDLE:
                    break
        return events


class _States(Mapping[TargetId, State]):
    """A live read-only view of target states: no per-transition copy of 10,000 entries."""

    def __init__(
        self,
        targets: dict[TargetId, TrunkHealth],
        links: dict[TargetId, LinkHealth],
        peers: dict[TargetId, PeerHealth],
    ) -> None:
        self._t, self._l, self._p = targets, links, peers

    def __getitem__(self, key: TargetId) -> State:
        h: TrunkHealth | LinkHealth | PeerHealth | None = (
            self._t.get(key) or self._l.get(key) or self._p.get(key)
        )
        if h is None:
            raise KeyError(key)
        return h.state

    def __iter__(self) -> Iterator[TargetId]:
        yield from self._t
        yield from self._l
        yield from self._p

    def __len__(self) -> int:
        return len(self._t) + len(self._l) + len(self._p)


def _drilled(events: Sequence[Event]) -> list[Event]:
    """A drill's events say so, for every sink, log and metric: `drill` set (what code
    reads; a reason is partly network text) and "(drill)" in the reason (for people)."""
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, Transition | Decision | SiteChange | SensorChange):
            said = ev.reason.endswith((f"({DRILL})", f"by {DRILL}"))
            ev = replace(ev, drill=True, reason=ev.reason if said else f"{ev.reason} ({DRILL})")
        out.append(ev)
    return out


def is_routing(ev: Event) -> bool:
    """Whether an event can change what is routed (and so what is published and saved)."""
    return isinstance(ev, Transition | Decision | SiteChange | DestTransition | TakeoverChange)
