"""The flagship: calls through a real SBC survive a carrier failure.

Namespaces: the SBC host (Kamailio with a dispatcher set of two carriers, the agent,
and a sipp caller placing 20 calls/s, 2 s each) and one namespace per carrier (a sipp
UAS answering INVITE and OPTIONS). Carrier A is silenced with an nftables drop; the
agent probes, decides and drives Kamailio's dispatcher over its RPC socket. Then A
comes back and, after `hold`, calls return to it.

Asserted: new calls connect through B after the reroute and none fails after it; no
call established after the reroute is torn down (failback included: changing the
dispatcher never touches existing dialogs); only calls placed inside the detection
window fail."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.lib import calls, procs
from tests.lib.agentproc import Agent, Event
from tests.lib.calllab import RATE, URI_A, URI_B, CallLab, call_lab

pytestmark = pytest.mark.integration


def state(lab: CallLab) -> dict[str, str]:
    """Dispatcher state letters of set 1 (A active, D disabled; the probing flag aside)."""
    return {uri: flags[0] for uri, flags in lab.kamailio.states()[1].items()}


def wall(ev: Event) -> float:
    return datetime.fromisoformat(str(ev["timestamp"]).replace("Z", "+00:00")).timestamp()


def test_calls_survive_a_carrier_failure_through_kamailio(tmp_path: Path) -> None:
    with call_lab(tmp_path) as lab:
        agent = Agent(lab.agent_config(), netns=lab.sbc_ns.name)
        try:
            agent.wait_for(agent.applied("carrier-a"), 15, "initial dispatcher state")
            assert state(lab) == {URI_A: "A", URI_B: "A"}  # A first, B behind it

            total = RATE * 18
            started = time.time()
            with lab.caller(tmp_path, total) as caller:

                def answered() -> int:
                    return sum(o.what == "ANSWERED" for o in caller.outcomes())

                procs.wait_for(lambda: answered() >= 3 * RATE, 15, "calls through carrier A")

                mark = agent.mark()
                silenced = time.time()
                lab.carrier_a.drop_udp_in(5060)
                applied = agent.wait_for(agent.applied("carrier-b"), 10, "reroute to B", mark)
                assert state(lab) == {URI_A: "D", URI_B: "A"}
                rerouted = wall(applied)
                before = answered()
                procs.wait_for(lambda: answered() >= before + 3 * RATE, 15, "calls through B")

                mark = agent.mark()
                lab.carrier_a.undrop()
                back = agent.wait_for(agent.applied("carrier-a"), 15, "failback to A", mark)
                failback = wall(back)
                caller.proc.wait(60)
            outcomes = caller.outcomes()
        finally:
            assert agent.stop() == 0

    sent = {n: started + (n - 1) / RATE for n in range(1, total + 1)}  # sipp paces calls
    by = {w: [o for o in outcomes if o.what == w] for w in ("ANSWERED", "COMPLETED", "TORN")}
    bad = calls.degraded(outcomes, RATE)  # failed, or answered seconds late via a retry
    bad_at = sorted(sent[n] for n in bad)
    window = (bad_at[-1] - bad_at[0]) if bad_at else 0.0
    late = sum(v == "late" for v in bad.values())
    print(
        f"\n{total} calls: {len(by['COMPLETED'])} completed, {len(bad) - late} failed and "
        f"{late} answered late (window {window * 1000:.0f} ms), "
        f"{len(by['ANSWERED']) - len(by['COMPLETED'])} cut on A by the outage; "
        f"silence -> reroute {(rerouted - silenced) * 1000:.0f} ms; "
        f"failback {failback - silenced:.1f} s after"
    )
    slack = 0.25  # caller start vs. our clock, and sipp's pacing
    # Only calls placed between the silence and the reroute may fail or be late...
    assert all(silenced - slack <= t <= rerouted + slack for t in bad_at), bad_at
    # ...so every call placed after the reroute connected at once and completed,
    # through failback too.
    done = {o.call for o in by["COMPLETED"]}
    after = [n for n, t in sent.items() if t > rerouted + slack]
    assert after and all(n in done and n not in bad for n in after)
    # Calls whose BYE went unanswered (torn, or aborted by sipp after its retransmissions)
    # can only be calls carrier A carried when it went silent.
    cut = [o.call for o in by["ANSWERED"] if o.call not in done]
    assert all(sent[n] < silenced + slack for n in cut), cut
    assert window <= rerouted - silenced + 2 * slack
