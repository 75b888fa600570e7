"""Peer sites in the core: sessions with epochs, heartbeats, takeover with second
evidence, fence delay, quorum, rival claims, self-fencing, and the route groups that
serve a peer's calls. Times are seconds passed in; nothing sleeps."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from trunkguard.core.engine import CoreSpec, Engine, Intent, TrunkSpec
from trunkguard.core.events import (
    Decision,
    DecisionKind,
    Event,
    Fence,
    State,
    TakeoverChange,
    TakeoverState,
    Verdict,
)
from trunkguard.core.health import HealthParams
from trunkguard.core.ids import peer, trunk
from trunkguard.core.peer import PeerBeat, PeerSpec, PeerStatus
from trunkguard.core.policy import GroupSpec, PathSpec
from trunkguard.core.takeover import QuorumMode, Release, TakeoverSpec, Voting

A, W, SBC = peer("site-a"), peer("witness"), trunk("site-a-sbc")
EPOCH = 100  # ours


def engine(
    *,
    quorum: bool = False,
    fence: float = 3.0,
    hold: float = 60.0,
    release: Release = Release.AUTO,
    confirm: bool = True,
) -> Engine:
    voting = Voting("site-b")
    if quorum:
        voting = Voting("site-b", QuorumMode.MAJORITY, ("site-a", "site-b", "witness"))
    spec = CoreSpec(
        trunks={SBC: TrunkSpec(HealthParams(rise=1, fall=1))},
        peers={A: PeerSpec("site-a"), W: PeerSpec("witness")},
        takeovers={
            "site-a": TakeoverSpec("site-a", A, (SBC,) if confirm else (), fence, hold, release)
        },
        voting=voting,
        groups=[
            GroupSpec("a-numbers", (PathSpec("takeover", serves="site-a"), PathSpec("standby"))),
            GroupSpec("to-a", (PathSpec("via-a", (A,)), PathSpec("local"))),
        ],
    )
    e = Engine(spec, 0.0)
    e.session(True, EPOCH, 0.0)
    e.heard_self(1e6, 0.0)  # our own heartbeat echo is fine unless a test says otherwise
    return e


def beat(site: str = "site-a", epoch: int = 5, **kw: object) -> PeerBeat:
    return PeerBeat(site, "sbc1", epoch, 3.0, **kw)  # type: ignore[arg-type]


def sbc(e: Engine, ok: bool, at: float) -> Sequence[Event]:
    return e.observe(Verdict(SBC, ok, at, "200 OK" if ok else "timeout"))


def of(events: Sequence[Event], kind: type) -> list:  # type: ignore[type-arg]
    return [ev for ev in events if type(ev) is kind]


def alive(e: Engine, until: float, epoch: int = 5, start: float = 0.0) -> list[Event]:
    """Site A beats every second (and the witness too) from `start` to `until`."""
    out: list[Event] = []
    t = start
    while t <= until:
        out += e.observe_peer(beat(epoch=epoch), t)
        out += e.observe_peer(beat("witness", 9, views={"site-a": State.UP}), t)
        out += e.tick(t)
        t += 1.0
    return out


def test_peer_is_unknown_then_up_on_heartbeat_then_down_when_it_expires() -> None:
    e = engine()
    assert e.states()[A] is State.UNKNOWN
    evs = e.observe_peer(beat(), 0.5)
    assert e.states()[A] is State.UP and e.peers[A].reason == "heartbeat fresh"
    [d] = of(evs, Decision)  # to-a needs A only: decided on A's first heartbeat
    assert d.group == "to-a" and d.new == ("via-a",)
    assert e.peers[A].due(0.5) == 3.5
    assert e.next_wakeup() == 3.0  # the witness's start-up grace comes first
    e.tick(3.4)
    assert e.states()[A] is State.UP
    evs = e.tick(3.5)
    assert e.states()[A] is State.DOWN
    assert e.peers[A].reason == "heartbeat expired (3s without one)"


def test_a_peer_that_never_speaks_is_down_after_expiry_from_listening() -> None:
    e = engine()
    e.tick(2.9)
    assert e.states()[A] is State.UNKNOWN
    e.tick(3.0)
    assert e.states()[A] is State.DOWN
    assert "no heartbeat in 3s since listening" in e.peers[A].reason


def test_a_retained_online_without_heartbeat_is_not_up() -> None:
    e = engine()
    e.observe_peer(PeerStatus("site-a", "sbc1", 7, True), 0.1)
    assert e.states()[A] is State.UNKNOWN
    e.tick(3.0)
    assert e.states()[A] is State.DOWN


def test_a_death_counts_only_for_the_live_epoch() -> None:
    e = engine()
    e.observe_peer(beat(epoch=6), 0.0)
    assert e.states()[A] is State.UP
    # A late Will of the session before (epoch 5): stale, ignored and counted.
    e.observe_peer(PeerStatus("site-a", "sbc1", 5, False), 0.5)
    assert e.states()[A] is State.UP and e.peers[A].stale == 1
    # A late heartbeat of the old session: stale too.
    e.observe_peer(beat(epoch=5), 0.6)
    assert e.peers[A].stale == 2
    # The live session's own Will: down at once, with the epoch in the reason.
    e.observe_peer(PeerStatus("site-a", "sbc1", 6, False), 1.0)
    assert e.states()[A] is State.DOWN
    assert e.peers[A].reason == "offline (session 6 ended)"
    # A heartbeat of the dead session that arrives late does not revive it.
    e.observe_peer(beat(epoch=6), 1.1)
    assert e.states()[A] is State.DOWN
    # A new session does.
    e.observe_peer(beat(epoch=7), 2.0)
    assert e.states()[A] is State.UP


def test_dead_peer_with_silent_sbc_is_taken_over_after_the_fence() -> None:
    e = engine()
    alive(e, 5)
    sbc(e, True, 0.5)
    assert e.desired()["a-numbers"] == ("standby",)
    # A's agent dies (its Will arrives) and its SBC stops answering.
    evs = e.observe_peer(PeerStatus("site-a", "sbc1", 5, False), 10.0)
    assert e.states()[A] is State.DOWN
    # MQTT says dead but the SBC still answers: a partition until the SBC fails.
    [refused] = of(evs, TakeoverChange)
    assert refused.result == "refused_partition" and "site-a-sbc still answers" in refused.reason
    evs = sbc(e, False, 11.0)
    [pending] = of(evs, TakeoverChange)
    assert pending.new is TakeoverState.PENDING and "fence 3s" in pending.reason
    assert e.next_wakeup() == 13.0  # the fence runs from the death, not the evidence
    assert of(e.tick(12.9), Decision) == []
    evs = e.tick(13.0)
    [taken] = of(evs, TakeoverChange)
    assert taken.result == "taken" and taken.new is TakeoverState.ACTIVE
    assert taken.reason == "site-a down, trunk:site-a-sbc down too"
    [d] = of(evs, Decision)
    assert d.kind is DecisionKind.TAKEOVER and d.new == ("takeover",)
    assert d.reason == "taking over site-a's calls"
    assert e.intent().takeovers == frozenset({"site-a"})

    # A's agent comes back, its SBC still dark: nothing goes back to it.
    assert of(e.observe_peer(beat(epoch=6), 19.0), TakeoverChange) == []
    # Both back: no swap until they have been up for `hold`; a flap restarts nothing.
    evs = sbc(e, True, 20.0)
    [releasing] = of(evs, TakeoverChange)
    assert releasing.new is TakeoverState.RELEASING and of(evs, Decision) == []
    evs = e.observe_peer(PeerStatus("site-a", "sbc1", 6, False), 25.0)
    assert of(evs, TakeoverChange)[0].new is TakeoverState.ACTIVE and of(evs, Decision) == []
    e.observe_peer(beat(epoch=7), 30.0)
    alive(e, 89.0, epoch=7, start=31.0)
    assert e.desired()["a-numbers"] == ("takeover",)
    evs = e.tick(90.0)
    [released] = of(evs, TakeoverChange)
    assert released.result == "released" and released.reason == "site-a up for 60s"
    [d] = of(evs, Decision)
    assert d.kind is DecisionKind.RELEASE and d.new == ("standby",)


def test_manual_release_waits_for_the_operator() -> None:
    e = engine(release=Release.MANUAL, confirm=False)
    alive(e, 2)
    e.observe_peer(PeerStatus("site-a", "sbc1", 5, False), 3.0)
    e.tick(6.0)
    assert e.serving() == {"site-a"}
    e.observe_peer(beat(epoch=6), 10.0)
    assert e.takeovers["site-a"].state is TakeoverState.RELEASING
    assert e.next_wakeup() != pytest.approx(70.0)
    alive(e, 200, epoch=6, start=11.0)
    assert e.serving() == {"site-a"}
    evs = e.release("site-a", 201.0)
    assert of(evs, Decision)[0].new == ("standby",)
    with pytest.raises(ValueError, match="no takeover of site-a"):
        e.release("site-a", 202.0)


def test_evacuation_announced_is_an_immediate_hand_over() -> None:
    e = engine()
    alive(e, 2)
    sbc(e, True, 0.5)
    evs = e.observe_peer(beat(epoch=5, evacuating=True), 3.0)
    assert e.states()[A] is State.EVACUATING
    [taken] = of(evs, TakeoverChange)
    assert taken.result == "taken" and "explicit hand-over" in taken.reason
    assert of(evs, Decision)[0].new == ("takeover",)
    # A path that requires A (evacuate to A) does not qualify while A evacuates.
    assert e.desired()["to-a"] == ("local",)


def test_quorum_majority_needs_the_witness_to_agree() -> None:
    e = engine(quorum=True)
    alive(e, 2)
    sbc(e, False, 0.5)
    # A's heartbeats stop; the witness still says A is up: no quorum.
    for t in (3.0, 4.0, 5.0, 6.0):
        e.observe_peer(beat("witness", 9, views={"site-a": State.UP}), t)
    evs = e.tick(6.0)
    assert e.states()[A] is State.DOWN
    [refused] = of(evs, TakeoverChange)
    assert refused.result == "refused_quorum"
    assert refused.reason == "no quorum: 1 of 3 voters see site-a down (site-b)"
    # The witness sees A down too: 2 of 3, the fence from A's down, then taken.
    evs = e.observe_peer(beat("witness", 9, views={"site-a": State.DOWN}), 7.0)
    assert of(evs, TakeoverChange)[0].new is TakeoverState.PENDING
    evs = e.tick(8.0)  # A went down at 5.0 (last beat 2.0 + 3s), fence 3s
    assert of(evs, TakeoverChange)[0].result == "taken"


def test_cut_off_from_every_other_voter_fences_and_freezes() -> None:
    e = engine(quorum=True)
    alive(e, 2)
    sbc(e, False, 0.5)
    evs = e.tick(5.0)  # both A and the witness fall silent: we are the ones cut off
    [fence] = of(evs, Fence)
    assert fence.on and fence.reason == "cannot see any other voter (site-a, witness)"
    assert of(evs, TakeoverChange) == [] and e.serving() == frozenset()
    alive(e, 10, start=6.0)
    assert e.fenced is None


def test_losing_the_broker_fences_and_makes_peers_unknown() -> None:
    e = engine(confirm=False)
    alive(e, 2)
    assert e.desired()["to-a"] == ("via-a",)
    evs = e.session(False, EPOCH, 2.5)
    [fence] = of(evs, Fence)
    assert fence.on and fence.reason == "lost the broker"
    assert e.states()[A] is State.UNKNOWN
    assert e.peers[A].reason == "this agent cannot reach the broker"
    # Frozen: routing stays as it was (a group waits while a target is unknown).
    assert of(evs, Decision) == [] and e.desired()["to-a"] == ("via-a",)
    assert of(e.tick(60.0), TakeoverChange) == []
    # Back: peers are judged afresh; a silent one goes down after expiry, the fence ends.
    evs = e.session(True, EPOCH + 1, 61.0)
    [fence] = of(evs, Fence)
    assert not fence.on and fence.since == 2.5
    e.heard_self(3.0, 61.0)
    e.tick(64.0)
    assert e.states()[A] is State.DOWN


def test_own_heartbeat_not_echoed_fences() -> None:
    e = engine()
    e.heard_self(3.0, 1.0)
    assert e.next_wakeup() == 3.0  # the peers' start-up grace comes first
    e.tick(3.0)
    [fence] = of(e.tick(4.0), Fence)
    assert fence.on and fence.reason == "own heartbeat not seen back through the broker"
    [fence] = of(e.heard_self(3.0, 4.5), Fence)
    assert not fence.on


def test_a_rival_claim_with_a_later_session_wins() -> None:
    e = engine(confirm=False)
    alive(e, 2)
    e.observe_peer(PeerStatus("site-a", "sbc1", 5, False), 3.0)
    e.tick(6.0)
    assert e.serving() == {"site-a"}
    evs = e.claim("site-a", "site-c/sbc1", EPOCH - 1, 7.0)
    assert evs == [] or of(evs, TakeoverChange) == []
    evs = e.claim("site-a", "site-c/sbc1", EPOCH + 1, 8.0)
    [lost] = of(evs, TakeoverChange)
    assert lost.result == "lost" and "site-c/sbc1 claims site-a" in lost.reason
    assert of(evs, Decision)[0].kind is DecisionKind.RELEASE
    # While the rival holds it, this agent does not claim again.
    assert of(e.tick(20.0), TakeoverChange) == []
    # The rival withdraws: the evidence and the fence held long ago, taken at once.
    evs = e.claim("site-a", "site-c/sbc1", None, 21.0)
    assert [c.new for c in of(evs, TakeoverChange)] == [
        TakeoverState.PENDING,
        TakeoverState.ACTIVE,
    ]


def test_an_evacuating_site_does_not_take_over() -> None:
    e = engine(confirm=False)
    alive(e, 2)
    e.evacuate(True, 2.5)
    evs = e.observe_peer(PeerStatus("site-a", "sbc1", 5, False), 3.0)
    [refused] = of(evs, TakeoverChange)
    assert refused.result == "refused_evacuating"


def test_a_takeover_survives_a_restart() -> None:
    e = engine(confirm=False)
    e.restore(Intent(takeovers=frozenset({"site-a"})), 0.0)
    assert e.serving() == {"site-a"}
    e.tick(0.0)
    assert e.desired()["a-numbers"] == ("takeover",)


def test_voting_ties_go_to_the_lowest_name() -> None:
    two = Voting("site-b", QuorumMode.MAJORITY, ("site-a", "site-b"))
    assert two.verdict("x", {"site-b"}) is not None
    assert two.verdict("x", {"site-a"}) is None
    four = Voting("b", QuorumMode.MAJORITY, ("a", "b", "c", "d"))
    assert four.verdict("x", {"a", "c"}) is None
    assert four.verdict("x", {"b", "c"}) is not None
    assert Voting("b").verdict("x", set()) is None


def test_operator_cannot_pin_around_a_takeover() -> None:
    e = engine(confirm=False)
    alive(e, 2)
    with pytest.raises(ValueError, match="serves site-a, which is not taken over"):
        e.failover("a-numbers", "takeover", 2.5)
    e.observe_peer(PeerStatus("site-a", "sbc1", 5, False), 3.0)
    e.tick(6.0)
    with pytest.raises(ValueError, match="serving a peer's calls"):
        e.failover("a-numbers", "standby", 7.0)
