"""Peer sites over MQTT: watching them (section `peers`), taking over their calls
(paths with `serves`) and who votes on that (section `takeover`).

Each peer becomes a target `peer:<site>`; a path may require it (evacuate to B only
while B is up) or serve it (B's path that carries A's calls once A is dead). The
input subscribes to the peers' status, heartbeat and takeover claims and to our own
heartbeat (the echo that proves our path through the broker works).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from trunkguard.bus.mqtt import Received
from trunkguard.core.engine import CoreSpec
from trunkguard.core.ids import peer
from trunkguard.core.peer import PeerBeat, PeerSpec, PeerStatus
from trunkguard.core.policy import GroupMode
from trunkguard.core.takeover import QuorumMode, Release, TakeoverSpec, Voting
from trunkguard.features.base import Context, Feature, Parts
from trunkguard.features.peers import wire
from trunkguard.schema import Duration, Lines, Loc, Name, Strict, TargetRef

if TYPE_CHECKING:
    from trunkguard.config import Config


class PeerConfig(Strict):
    # The peer's nodes to watch; empty: every node that publishes under its site.
    nodes: list[Name] = []
    # No heartbeat for this long: down. Default: our own mqtt heartbeat expiry (sites
    # of one deployment share it).
    expiry: Duration | None = None
    # Second evidence before taking over: our own probes of the peer's SBC.
    confirm: list[TargetRef] = []
    second_evidence: bool = True
    # After the peer is seen down: time for a peer that only lost its broker to fence
    # itself (it does within its heartbeat expiry). Default: the expiry.
    fence: Duration | None = None
    hold: Duration = 60.0  # the peer up this long before its calls go back
    release: Release = Release.AUTO


class TakeoverConfig(Strict):
    quorum: QuorumMode = QuorumMode.NONE
    # Who votes with `quorum: majority`; default: this site and every peer.
    voters: list[Name] = []


class Peers(Feature):
    name = "peers"

    def check(self, cfg: Config, lines: Lines) -> list[str]:
        problems: list[str] = []
        if cfg.peers and cfg.mqtt is None:
            problems.append(lines.problem(("peers",), "peers are seen through MQTT: set mqtt"))
        known = cfg.targets()
        for name, p in cfg.peers.items():
            if name == cfg.site:
                problems.append(lines.problem(("peers", name), "a site is not its own peer"))
            for j, t in enumerate(p.confirm):
                if t not in known or t.kind.value == "peer":
                    msg = f"confirm needs a trunk or link (our own probes), got {str(t)!r}"
                    problems.append(lines.problem(("peers", name, "confirm", j), msg))
        served = set()
        for gname, g in cfg.routes.items():
            for i, path in enumerate(g.paths):
                if path.serves is None:
                    continue
                loc: Loc = ("routes", gname, "paths", i, "serves")
                pc = cfg.peers.get(path.serves)
                if pc is None:
                    problems.append(lines.problem(loc, f"unknown peer {path.serves!r}"))
                    continue
                if g.mode is GroupMode.MULTIPATH:
                    problems.append(lines.problem(loc, "a multipath group cannot serve a peer"))
                if pc.second_evidence and not pc.confirm and path.serves not in served:
                    msg = (
                        f"taking over {path.serves} needs second evidence: peers."
                        f"{path.serves}.confirm (its SBC as a trunk), or second_evidence: false"
                    )
                    problems.append(lines.problem(loc, msg))
                served.add(path.serves)
        tc = cfg.takeover
        for j, v in enumerate(tc.voters):
            if v != cfg.site and v not in cfg.peers:
                msg = f"voter {v!r} is neither this site nor a peer"
                problems.append(lines.problem(("takeover", "voters", j), msg))
        if tc.voters and cfg.site not in tc.voters:
            problems.append(lines.problem(("takeover", "voters"), f"add this site ({cfg.site})"))
        return problems

    def core(self, cfg: Config, spec: CoreSpec) -> None:
        if cfg.mqtt is None:
            return
        spec.heartbeat_expiry = cfg.mqtt.expiry()
        spec.session = True
        for name, p in cfg.peers.items():
            spec.peers[peer(name)] = PeerSpec(name, tuple(p.nodes), self.expiry(cfg, name))
        served = {path.serves for g in cfg.routes.values() for path in g.paths if path.serves}
        for name in sorted(served):
            p = cfg.peers[name]
            fence = p.fence if p.fence is not None else self.expiry(cfg, name)
            confirm = tuple(p.confirm) if p.second_evidence else ()
            spec.takeovers[name] = TakeoverSpec(name, peer(name), confirm, fence, p.hold, p.release)
        t = cfg.takeover
        voters = tuple(t.voters) or tuple(sorted({cfg.site, *cfg.peers}))
        spec.voting = Voting(cfg.site, t.quorum, voters if t.quorum is QuorumMode.MAJORITY else ())

    @staticmethod
    def expiry(cfg: Config, name: str) -> float:
        p = cfg.peers[name]
        assert cfg.mqtt is not None
        return p.expiry if p.expiry is not None else cfg.mqtt.expiry()

    def build(self, ctx: Context) -> Parts:
        if ctx.mqtt is None or ctx.cfg.mqtt is None:
            return Parts()
        listener = PeerInput(ctx)
        prefix = ctx.cfg.mqtt.prefix
        ctx.topics[ctx.mqtt.topic("heartbeat")] = listener.echo
        for name in ctx.cfg.peers:
            ctx.topics[f"{prefix}/{name}/+/status"] = listener.status
            ctx.topics[f"{prefix}/{name}/+/heartbeat"] = listener.heartbeat
        for name in ctx.hub.engine.takeovers:
            ctx.topics[f"{prefix}/+/+/takeover/{name}"] = listener.claim
        return Parts()


class PeerInput:
    """Peer messages in: parsed as hostile, counted, handed to the hub."""

    def __init__(self, ctx: Context) -> None:
        assert ctx.cfg.mqtt is not None and ctx.mqtt is not None
        self.ctx, self.hub, self.mqtt = ctx, ctx.hub, ctx.mqtt
        self.limit = ctx.cfg.mqtt.max_payload
        self.own_expiry = ctx.cfg.mqtt.expiry()
        self.me = (ctx.cfg.site, ctx.cfg.node)
        self.errors: dict[str, str] = {}  # per peer: the last error logged
        self.births: set[tuple[str, str]] = set()  # nodes whose status we have
        self.asked: set[tuple[str, str]] = set()  # nodes asked for a rebirth

    def echo(self, m: Received) -> None:
        """Our own heartbeat back from the broker (live, this session's)."""
        if m.retained:
            return
        try:
            epoch = wire.epoch_of(m, self.limit)
        except wire.WireError:
            return
        if epoch == self.mqtt.epoch:
            self.hub.heard_self(self.own_expiry)

    def status(self, m: Received) -> None:
        """prefix/<site>/<node>/status: a birth or a death."""
        site, node = _site_node(m.topic, 1)
        if self._take(site, m, lambda: wire.status(site, node, m, self.limit)):
            self.births.add((site, node))

    def heartbeat(self, m: Received) -> None:
        """prefix/<site>/<node>/heartbeat."""
        site, node = _site_node(m.topic, 1)
        ttl = self._ttl(site, m)
        if ttl is None:
            return
        taken = self._take(site, m, lambda: wire.beat(site, node, m, self.limit, ttl))
        if taken and not m.retained:  # retained: its status may simply come next
            self._rebirth_if_unborn(site, node)

    def claim(self, m: Received) -> None:
        """prefix/<site>/<node>/takeover/<peer>: another agent's claim on a peer."""
        site, node = _site_node(m.topic, 2)
        peer_name = m.topic.rsplit("/", 1)[-1]
        if (site, node) == self.me:
            return
        count = self.ctx.metrics.peer_messages_total
        try:
            c = wire.claim(site, node, peer_name, m, self.limit)
        except wire.WireError as e:
            self._refused(peer_name, m, e)
            return
        count.labels(peer_name, "ok").inc()
        self.hub.claim(c.peer, f"{c.site}/{c.node}", c.epoch)

    def _take(self, site: str, m: Received, parse: Callable[[], PeerStatus | PeerBeat]) -> bool:
        """Parse, hand to the hub, count (ok, stale or invalid); False when refused."""
        try:
            msg = parse()
        except wire.WireError as e:
            self._refused(site, m, e)
            return False
        stale_before = self._stale(site)
        self.hub.peer(msg)
        stale = self._stale(site) > stale_before
        self.ctx.metrics.peer_messages_total.labels(site, "stale" if stale else "ok").inc()
        return True

    def _refused(self, name: str, m: Received, e: wire.WireError) -> None:
        self.ctx.metrics.peer_messages_total.labels(name, "invalid").inc()
        error = f"{m.topic}: {e}"
        if self.errors.get(name) != error:  # once per change, not per message
            self.errors[name] = error
            self.ctx.log.warning("peer message refused", peer=name, error=error)

    def _ttl(self, site: str, m: Received) -> float | None:
        """How long a heartbeat proves life. A retained one is as old as the broker's
        store: believed only for the expiry MQTT 5 says is left (3.1.1 has none)."""
        expiry = Peers.expiry(self.ctx.cfg, site)
        if not m.retained:
            return expiry
        return None if m.expiry is None else min(m.expiry, expiry)

    def _stale(self, site: str) -> int:
        ph = self.hub.engine.peers.get(peer(site))
        return 0 if ph is None else ph.stale

    def _rebirth_if_unborn(self, site: str, node: str) -> None:
        """A heartbeat without a birth: the broker lost retained state; ask for it."""
        key = (site, node)
        if key not in self.births and key not in self.asked:
            self.asked.add(key)
            self.mqtt.ask_rebirth(site, node)


def _site_node(topic: str, tail: int) -> tuple[str, str]:
    """The <site>/<node> levels before the last `tail` levels of a matched topic."""
    levels = topic.split("/")
    return levels[-tail - 2], levels[-tail - 1]


FEATURE = Peers()
