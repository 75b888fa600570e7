"""Peer sites seen through MQTT: sessions with epochs, heartbeats, a state per site.

Pure. The shell parses what peers publish (status, heartbeat) into the observations
below, with the local monotonic time they arrived; nothing here trusts a peer's clock.

Rules (after Sparkplug 3.0 and corosync):
- Every agent session has an epoch, larger than any before it. Only the highest epoch
  seen from a node is its live session: a Will or a retained document from an older
  epoch is stale and ignored (counted).
- A node is up while its heartbeat is fresh: the last one arrived less than `expiry`
  ago. A retained `online` proves nothing by itself (the session may have died while
  the broker lost its Will), so a node that never sends a heartbeat goes down once
  `expiry` has passed since we started listening.
- A death (offline status) counts only for the live epoch, and ends the session at
  once: that is the Will a broker publishes when the peer's connection dies.
- A site is evacuating when any of its live nodes says so (an explicit hand-over),
  up when any node is up, down when every node is down, unknown before evidence.
- While this agent cannot see the broker it cannot see peers either: every peer is
  unknown (nothing is concluded from silence we caused ourselves).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from trunkguard.core.events import State, Transition
from trunkguard.core.health import move
from trunkguard.core.ids import TargetId


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """A node's birth (online) or death (offline, usually its Last Will)."""

    site: str
    node: str
    epoch: int
    online: bool


@dataclass(frozen=True, slots=True)
class PeerBeat:
    """A node's heartbeat: alive for `ttl` seconds from arrival, and what it sees."""

    site: str
    node: str
    epoch: int
    ttl: float
    evacuating: bool = False
    views: Mapping[str, State] = field(default_factory=dict)  # its view of other sites
    fenced: bool = False


@dataclass(frozen=True, slots=True)
class PeerSpec:
    site: str
    nodes: tuple[str, ...] = ()  # empty: any node of the site that speaks
    expiry: float = 3.0  # no heartbeat for this long: the node is down


@dataclass(slots=True)
class Session:
    """What is known of one node's live session."""

    epoch: int = -1
    dead: bool = False  # an offline status of this epoch arrived
    fresh_until: float | None = None  # heartbeat of this epoch valid until
    evacuating: bool = False
    views: Mapping[str, State] = field(default_factory=dict)
    fenced: bool = False

    def adopt(self, epoch: int) -> bool:
        """Move to `epoch` if it is not older; False for a stale message."""
        if epoch < self.epoch:
            return False
        if epoch > self.epoch:
            self.epoch, self.dead, self.fresh_until = epoch, False, None
            self.evacuating, self.views, self.fenced = False, {}, False
        return True

    def state(self, now: float, listening_since: float, expiry: float) -> tuple[State, str, float]:
        """The node's state, why, and since when (an expiry happened when it fell due,
        not when a timer noticed)."""
        if self.dead:
            return State.DOWN, f"offline (session {self.epoch} ended)", now
        if self.fresh_until is not None and now < self.fresh_until:
            if self.evacuating:
                return State.EVACUATING, "announces evacuation", now
            return State.UP, "heartbeat fresh", now
        if self.fresh_until is not None:
            return State.DOWN, f"heartbeat expired ({expiry:g}s without one)", self.fresh_until
        if now >= listening_since + expiry:
            why = f"no heartbeat in {expiry:g}s since listening"
            return State.DOWN, why, listening_since + expiry
        return State.UNKNOWN, "no heartbeat yet", now


_ORDER = (State.EVACUATING, State.UP, State.UNKNOWN, State.DOWN)


@dataclass(slots=True)
class PeerHealth:
    name: TargetId
    spec: PeerSpec
    listening_since: float = 0.0
    connected: bool = True  # this agent sees the broker
    sessions: dict[str, Session] = field(default_factory=dict)
    state: State = State.UNKNOWN
    since: float = 0.0
    reason: str = "no heartbeat yet"
    stale: int = 0  # messages from older sessions, ignored

    def __post_init__(self) -> None:
        for node in self.spec.nodes:
            self.sessions[node] = Session()

    def _session(self, node: str) -> Session | None:
        if self.spec.nodes and node not in self.spec.nodes:
            return None  # a node we were not told to watch
        return self.sessions.setdefault(node, Session())

    def status(self, s: PeerStatus, now: float) -> Transition | None:
        sess = self._session(s.node)
        if sess is None:
            return None
        if not sess.adopt(s.epoch):
            self.stale += 1
            return None
        if not s.online:
            sess.dead, sess.fresh_until = True, None
        return self.evaluate(now)

    def beat(self, b: PeerBeat, now: float) -> Transition | None:
        sess = self._session(b.node)
        if sess is None:
            return None
        if not sess.adopt(b.epoch) or sess.dead:
            self.stale += 1  # a heartbeat after its own session's death is a late one
            return None
        sess.fresh_until = now + b.ttl
        sess.evacuating, sess.views, sess.fenced = b.evacuating, b.views, b.fenced
        return self.evaluate(now)

    def set_connected(self, up: bool, now: float) -> Transition | None:
        """Our own broker session: heartbeats are judged afresh from reconnection."""
        if up and not self.connected:
            self.listening_since = now
            for sess in self.sessions.values():
                sess.fresh_until = None if sess.fresh_until is None else min(sess.fresh_until, now)
        self.connected = up
        return self.evaluate(now)

    def evaluate(self, now: float) -> Transition | None:
        if not self.connected:
            return move(self, State.UNKNOWN, now, "this agent cannot reach the broker")
        exp = self.spec.expiry
        seen = [
            (node, *s.state(now, self.listening_since, exp)) for node, s in self.sessions.items()
        ]
        if not seen:  # no node spoke yet
            state, why, at = Session().state(now, self.listening_since, exp)
            return move(self, state, max(at, self.since), why)
        best = min(seen, key=lambda x: _ORDER.index(x[1]))
        reason, at = (best[2] if len(seen) == 1 else f"{best[0]}: {best[2]}"), best[3]
        if best[1] is State.DOWN and len(seen) > 1:
            reason = "every node down: " + ", ".join(f"{n}: {r}" for n, _, r, _ in seen)
            at = max(x[3] for x in seen)
        return move(self, best[1], max(at, self.since), reason)

    def due(self, now: float) -> float | None:
        """When a heartbeat expires (or the start-up grace ends), if that is ahead."""
        if not self.connected:
            return None
        times = [
            s.fresh_until
            for s in self.sessions.values()
            if not s.dead and s.fresh_until is not None and s.fresh_until > now
        ]
        if self.state is State.UNKNOWN:
            times.append(self.listening_since + self.spec.expiry)
        future = [t for t in times if t > now]
        return min(future, default=None)

    def live(self, now: float) -> list[Session]:
        return [s for s in self.sessions.values() if not s.dead and (s.fresh_until or 0) > now]

    def sees(self, other: str, now: float) -> State | None:
        """How this peer's live nodes see another site (its vote), or None if silent."""
        views = [s.views.get(other) for s in self.live(now)]
        known = [v for v in views if v is not None]
        if not known:
            return None
        return min(known, key=_ORDER.index)
