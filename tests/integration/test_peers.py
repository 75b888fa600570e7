"""Peer sites for real: agents at two (or three) sites, brokers bridged through a hub,
SBCs answering OPTIONS in their namespaces. A site that dies is taken over (route read
back from the kernel), a partition is not, a stale session does not fool anyone, an
evacuation hands over at once, a witness decides, and a hub restart loses nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from tests.lib.agentproc import Agent
from tests.lib.peerlab import NODE, PeerLab, fenced, peer_lab, peer_state, takeover

pytestmark = pytest.mark.integration

A, B, W = "site-a", "site-b", "witness"
LOCAL = "dev lo"  # the takeover route: B serves A's numbers itself


def start_pair(pl: PeerLab) -> tuple[Agent, Agent]:
    for s in (A, B):
        pl.start_sbc(s)
        pl.config(s, peers=[t for t in (A, B) if t != s])
    a, b = pl.start_agent(A), pl.start_agent(B)
    for agent, other in ((a, B), (b, A)):
        agent.wait_for(Agent.applied("standby"), 20, "standby route")
        agent.wait_for(peer_state(other, "up"), 20, f"{other} up")
    return a, b


def standby(pl: PeerLab, site: str) -> str:
    return f"via {pl.lab[site].hub_address}"


@pytest.mark.parametrize("death", ["SIGKILL", "SIGSTOP"])
def test_dead_site_is_taken_over_after_evidence_and_fence_and_released_after_hold(
    tmp_path: Path, death: str
) -> None:
    with peer_lab(tmp_path) as pl:
        a, b = start_pair(pl)
        assert standby(pl, B) in pl.route(B)
        mark = b.mark()
        t0 = time.monotonic()
        a.signal(getattr(signal, death))
        pl.stop_sbc(A)
        down = b.wait_for(peer_state(A, "down"), 10, "A down", mark)
        want = "offline (session" if death == "SIGKILL" else "heartbeat expired"
        assert want in down["reason"]
        pending = b.wait_for(takeover(A, new="pending"), 10, "takeover pending", mark)
        assert "trunk:site-a-sbc down too" in pending["reason"]
        taken = b.wait_for(takeover(A, "taken"), 10, "takeover", mark)
        b.wait_for(Agent.applied("takeover"), 10, "takeover route applied", mark)
        took = time.monotonic() - t0
        assert LOCAL in pl.route(B), pl.route(B)
        assert "site-a down" in taken["reason"]
        # The bound: heartbeat expiry 1.5s (or the Will at once), probes fall 2 x ~0.6s,
        # fence 1.5s; generous here (timings are for bench/peer_takeover.py).
        assert took < 10, took
        st = pl.status(B)
        assert st["takeovers"][A]["state"] == "active" and st["peers"][A]["state"] == "down"

        # A comes back (SBC, then agent): nothing moves until A is up for the hold.
        mark = b.mark()
        pl.start_sbc(A)
        if death == "SIGSTOP":
            a.signal(signal.SIGCONT)  # its session died meanwhile: it reconnects anew
        else:
            a = pl.start_agent(A)
        b.wait_for(peer_state(A, "up"), 20, "A up again", mark)
        releasing = b.wait_for(takeover(A, new="releasing"), 10, "releasing", mark)
        released = b.wait_for(takeover(A, "released"), 10, "released", mark)
        assert released["reason"] == "site-a up for 3s"
        b.wait_for(Agent.applied("standby"), 10, "standby route again", mark)
        assert standby(pl, B) in pl.route(B)
        changes = [e for e in b.events[mark:] if e.get("event") == "route change"]
        assert [c["new"] for c in changes] == ["standby"], changes  # no flap
        assert changes[0]["kind"] == "release"
        assert releasing["new"] == "releasing"
        # The revived A never claimed B (B was up all along) and is not fenced now.
        assert not any(takeover(B, "taken")(e) for e in a.events)
        assert pl.status(A)["fenced"] is None


def test_partition_is_not_a_death(tmp_path: Path) -> None:
    """A's broker dies (its bridge with it), then A's bridge is cut by nftables: A's
    SBC still answers B, so B suspects a partition and takes nothing over."""
    with peer_lab(tmp_path) as pl:
        a, b = start_pair(pl)
        for cut in ("broker", "bridge"):
            mark_a, mark_b = a.mark(), b.mark()
            if cut == "broker":
                pl.lab.kill_broker(A)
            else:
                pl.lab.block_bridge(A)
            b.wait_for(peer_state(A, "down"), 10, "A down (as B sees it)", mark_b)
            refused = b.wait_for(takeover(A, "refused_partition"), 10, "refusal", mark_b)
            assert "trunk:site-a-sbc still answers" in refused["reason"]
            if cut == "broker":
                # A lost its broker: it fences itself and says so.
                fence = a.wait_for(fenced, 10, "A fenced", mark_a)
                assert fence["reason"] in (
                    "lost the broker",
                    "own heartbeat not seen back through the broker",
                )
            else:
                # A still has its broker but sees B go silent with B's SBC answering.
                r = a.wait_for(takeover(B, "refused_partition"), 10, "A refuses", mark_a)
                assert "trunk:site-b-sbc still answers" in r["reason"]
            with pytest.raises(TimeoutError):  # the fence (1.5s) is long gone by then
                b.wait_for(takeover(A, "taken"), 4, "no takeover", mark_b)
            assert standby(pl, B) in pl.route(B) and standby(pl, A) in pl.route(A)
            if cut == "broker":
                pl.lab.start_broker(A)
            else:
                pl.lab.unblock_bridge(A)
            b.wait_for(peer_state(A, "up"), 30, "A up again", mark_b)
        assert pl.status(A)["fenced"] is None


async def test_stale_sessions_do_not_fool_a_peer(tmp_path: Path) -> None:
    with peer_lab(tmp_path) as pl:
        a, b = await asyncio.to_thread(start_pair, pl)
        epoch = None
        status_topic = f"trunkguard/{A}/{NODE}/status"
        async with pl.lab.client(A) as c:
            await c.subscribe(status_topic, qos=1)
            async with asyncio.timeout(10):
                async for m in c.messages:
                    epoch = json.loads(m.payload)["epoch"]  # type: ignore[arg-type]
                    break
            assert isinstance(epoch, int)
            mark_a, mark_b = a.mark(), b.mark()
            # A late Will of an older session: B ignores it, A heals its own status.
            old = {"status": "offline", "epoch": epoch - 1, "connected_at": "x"}
            await c.publish(status_topic, json.dumps(old).encode(), qos=1, retain=True)
            await asyncio.to_thread(
                a.wait_for,
                lambda e: e.get("event") == "own death seen while connected: birth again",
                10,
                "A re-born",
                mark_a,
            )
            async with asyncio.timeout(10):
                async for m in c.messages:
                    doc = json.loads(m.payload)  # type: ignore[arg-type]
                    if doc["status"] == "online" and doc["epoch"] == epoch:
                        break
            # Garbage on A's heartbeat topic is refused before the core, once per reason.
            hb_topic = f"trunkguard/{A}/{NODE}/heartbeat"
            for junk in (b"\xff" * 10_000, b'{"epoch": "soon"}', b'{"epoch": 1e99}'):
                await c.publish(hb_topic, junk, qos=1)
            refused = await asyncio.to_thread(
                b.wait_for,
                lambda e: e.get("event") == "peer message refused" and "1e+99" in e["error"],
                10,
                "garbage refused",
                mark_b,
            )
            assert refused["peer"] == A
            said = [
                e["error"] for e in b.events[mark_b:] if e.get("event") == "peer message refused"
            ]
            assert any("max_payload 4096" in e for e in said), said
        st = pl.status(B)["peers"][A]
        assert st["state"] == "up" and st["stale_messages"] >= 1
        assert not any(peer_state(A, "down")(e) for e in b.events[mark_b:])

        # A dies; then a retained `online` of its dead session, and one of a session
        # that never sends a heartbeat: B believes neither.
        a.signal(signal.SIGKILL)
        pl.stop_sbc(A)
        await asyncio.to_thread(b.wait_for, peer_state(A, "down"), 10, "A down", mark_b)
        mark_b = b.mark()
        async with pl.lab.client(A) as c:
            for e in (epoch, epoch + 1):
                born = {"status": "online", "epoch": e, "connected_at": "x"}
                await c.publish(status_topic, json.dumps(born).encode(), qos=1, retain=True)
        await asyncio.to_thread(b.wait_for, takeover(A, "taken"), 15, "takeover", mark_b)
        assert not any(peer_state(A, "up")(e) for e in b.events[mark_b:])
        assert pl.status(B)["peers"][A]["state"] == "down"


BMS = "trunkguard/site-a/bms/room"


def test_evacuation_hands_over_at_once_and_refuses_without_a_peer(tmp_path: Path) -> None:
    """A's cooling rule evacuates A to B (a path requiring peer:site-b): B sees A
    evacuating and takes over without waiting for a death or a fence. With B gone,
    A's evacuation has nowhere to go and says so."""
    evac = f"""\
sensors:
  room: {{mqtt: {{topic: {BMS}}}, warn: 27, critical: 32, stale_after: 1h}}
evacuation:
  hold: 1h
  when: {{sensors: [room], is: critical}}
"""
    with peer_lab(tmp_path) as pl:
        for s in (A, B):
            pl.start_sbc(s)
        pl.config(B, peers=[A])
        pl.config(A, peers=[B], serves=[], extra=evac)
        # A's own calls: local normally, to site B (only while B is up) when evacuating.
        text = (
            pl.configs[A]
            .read_text()
            .replace(
                "routes: {}",
                f"""routes:
  pstn:
    paths:
      - {{name: local}}
      - {{name: to-site-b, remote: true, requires: [peer:{B}]}}""",
            )
        )
        pl.configs[A].write_text(text)
        a, b = pl.start_agent(A), pl.start_agent(B)
        a.wait_for(Agent.applied("local"), 20, "A local")
        b.wait_for(Agent.applied("standby"), 20, "B standby")
        a.wait_for(peer_state(B, "up"), 20, "A sees B")
        b.wait_for(peer_state(A, "up"), 20, "B sees A")

        async def room(value: float) -> None:
            async with pl.lab.client(A) as c:
                await c.publish(BMS, str(value).encode(), qos=1)

        mark_a, mark_b = a.mark(), b.mark()
        asyncio.run(room(33.0))
        a.wait_for(lambda e: e.get("event") == "site" and e.get("new") == "evacuating", 10, "evac")
        a.wait_for(
            lambda e: e.get("event") == "route change" and e.get("new") == "to-site-b",
            10,
            "A to B",
            mark_a,
        )
        b.wait_for(peer_state(A, "evacuating"), 10, "B sees A evacuating", mark_b)
        taken = b.wait_for(takeover(A, "taken"), 10, "B takes over", mark_b)
        assert "explicit hand-over" in taken["reason"]
        assert not any(takeover(A, new="pending")(e) for e in b.events[mark_b:])  # no fence
        b.wait_for(Agent.applied("takeover"), 10, "B route", mark_b)
        assert LOCAL in pl.route(B)

        # B goes away (a clean stop says offline): A's evacuation path no longer qualifies.
        mark_a = a.mark()
        b.stop()
        a.wait_for(peer_state(B, "down"), 10, "A sees B down", mark_a)
        alarm = a.wait_for(
            lambda e: e.get("event") == "route group has no path", 10, "alarm", mark_a
        )
        assert alarm["group"] == "pstn" and alarm["kept"] == "to-site-b"
        assert any("peer:site-b down" in u for u in alarm["unmet"]), alarm
        assert pl.status(A)["routes"]["pstn"]["alarm"] is True


def test_witness_majority_decides(tmp_path: Path) -> None:
    """With a witness and quorum: majority, B cut off from A and the witness (bridge
    and SIP alike) takes nothing over; A really dead is taken over."""
    with peer_lab(tmp_path, witness=W) as pl:
        for s in (A, B):
            pl.start_sbc(s)
        pl.config(A, peers=[B, W], serves=[B], quorum=True)
        pl.config(B, peers=[A, W], serves=[A], quorum=True)
        pl.config(W, peers=[A, B], serves=[])
        a, b, w = pl.start_agent(A), pl.start_agent(B), pl.start_agent(W)
        for agent, others in ((a, (B, W)), (b, (A, W)), (w, (A, B))):
            for o in others:
                agent.wait_for(peer_state(o, "up"), 20, f"{o} up")
        b.wait_for(Agent.applied("standby"), 20, "B standby")

        # B cut off from everything: MQTT says A is dead and A's SBC is silent too, but
        # B cannot see a majority: it fences itself.
        mark_b = b.mark()
        nsb = pl.lab[B].ns
        nsb.nft(
            "table inet tgcut {\n"
            '  chain o { type filter hook output priority -10; oifname != "lo" drop; }\n'
            '  chain i { type filter hook input priority -10; iifname != "lo" drop; }\n'
            "}\n"
        )
        try:
            b.wait_for(peer_state(A, "down"), 10, "A down as B sees it", mark_b)
            fence = b.wait_for(fenced, 10, "B fenced", mark_b)
            assert "cannot see any other voter" in fence["reason"]
            with pytest.raises(TimeoutError):
                b.wait_for(takeover(A, "taken"), 4, "no takeover", mark_b)
        finally:
            nsb.sh("nft", "delete", "table", "inet", "tgcut", check=False)
        b.wait_for(lambda e: e.get("event") == "fence ended", 30, "B unfenced", mark_b)
        b.wait_for(peer_state(A, "up"), 30, "A up again", mark_b)

        # A really dies: B and the witness agree, 2 of 3.
        mark_b = b.mark()
        a.signal(signal.SIGKILL)
        pl.stop_sbc(A)
        taken = b.wait_for(takeover(A, "taken"), 15, "takeover with quorum", mark_b)
        assert "2 of 3 voters agree" in taken["reason"]
        b.wait_for(Agent.applied("takeover"), 10, "B route", mark_b)
        assert LOCAL in pl.route(B)


async def test_hub_restart_during_a_takeover_loses_nothing(tmp_path: Path) -> None:
    with peer_lab(tmp_path) as pl:
        a, b = await asyncio.to_thread(start_pair, pl)
        mark_b = b.mark()
        a.signal(signal.SIGKILL)
        pl.stop_sbc(A)
        await asyncio.to_thread(b.wait_for, Agent.applied("takeover"), 15, "takeover", mark_b)

        await asyncio.to_thread(pl.lab.restart_hub)  # the hub's retained store is gone
        await pl.lab.bridge_connected(B)
        t0 = time.monotonic()
        base = f"trunkguard/{B}/{NODE}"
        want = {f"{base}/heartbeat", f"{base}/state", f"{base}/takeover/{A}"}
        seen: dict[str, dict[str, object]] = {}
        async with pl.lab.client("hub") as noc:
            await noc.subscribe(f"{base}/#", qos=1)
            async with asyncio.timeout(10):
                async for m in noc.messages:
                    if str(m.topic) in want and m.payload:
                        seen[str(m.topic)] = json.loads(m.payload)  # type: ignore[arg-type]
                    if set(seen) == want:
                        break
        back = time.monotonic() - t0
        assert back < 2.0, back
        assert seen[f"{base}/takeover/{A}"]["claimed"] is True
        assert seen[f"{base}/state"]["takeovers"][A]["state"] == "active"  # type: ignore[index]
        # Nothing local was lost or redone: B's route never moved.
        assert LOCAL in pl.route(B)
        changes = [e for e in b.events[mark_b:] if e.get("event") == "route change"]
        assert [c["new"] for c in changes] == ["takeover"]
