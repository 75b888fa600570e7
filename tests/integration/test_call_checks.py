"""Synthetic calls with real media: pjsua2 in a child process calling sipp carriers on
loopback. A carrier that echoes RTP passes; one that answers OPTIONS but rejects
INVITE, and one that answers without sending RTP, fail with distinct reasons while
OPTIONS still say up (the silent backup). A child that crashes or hangs is a failed
check and never stalls the agent's loop."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import sys
from pathlib import Path

import pytest

from tests.lib import calls, procs, sipp
from tests.lib.agentproc import Agent, cli
from tests.lib.sbclab import sbc_lab
from trunkguard.calls.check import place

pytestmark = pytest.mark.integration


def metric(port: int, name: str) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", f"/metrics?name[]={name}")
    text = conn.getresponse().read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name) :]] = float(value)
    return out


def test_call_checks_tell_working_rejecting_and_silent_carriers_apart(tmp_path: Path) -> None:
    echo, reject, mute, echo_rtp, mute_rtp = (procs.free_port() for _ in range(5))
    http_port = procs.free_port(socket.SOCK_STREAM)
    cfg = tmp_path / "trunkguard.yaml"
    cfg.write_text(f"""\
site: dc1
node: sbc1
control: {{socket: {tmp_path}/control.sock}}
metrics: {{listen: "127.0.0.1:{http_port}"}}
probe: {{interval: 500ms, fast_interval: 200ms, timeout: 400ms, rise: 1, fall: 1}}
trunks:
  carrier-a: {{uri: "sip:127.0.0.1:{echo}"}}
  carrier-b: {{uri: "sip:127.0.0.1:{reject}"}}
  carrier-c: {{uri: "sip:127.0.0.1:{mute}"}}
calls:
  via-a: {{uri: "sip:echo@127.0.0.1:{echo}", every: 30s, duration: 1s, tone: true}}
  via-b: {{uri: "sip:echo@127.0.0.1:{reject}", every: 30s, duration: 1s}}
  via-c: {{uri: "sip:echo@127.0.0.1:{mute}", every: 30s, duration: 1s}}
routes:
  outbound:
    paths:
      - {{name: a, requires: [trunk:carrier-a], verified_by: call:via-a}}
      - {{name: b, requires: [trunk:carrier-b], verified_by: call:via-b}}
      - {{name: c, requires: [trunk:carrier-c], verified_by: call:via-c}}
""")
    with (
        sipp.uas(
            tmp_path,
            "echo",
            calls.CARRIER,
            "127.0.0.1",
            echo,
            media_port=echo_rtp,
            extra=("-rtp_echo",),
        ),
        sipp.uas(tmp_path, "reject", calls.REJECTS_CALLS, "127.0.0.1", reject),
        sipp.uas(tmp_path, "mute", calls.CARRIER, "127.0.0.1", mute, media_port=mute_rtp),
    ):
        agent = Agent(cfg)
        try:
            checks = {}
            for name in ("via-a", "via-b", "via-c"):
                checks[name] = agent.wait_for(
                    Agent.call_checked(name),
                    30,
                    f"call check {name}",
                )
            assert checks["via-a"]["ok"] is True
            assert checks["via-a"]["reason"].startswith(
                "answered with media both ways, answered in"
            )
            assert checks["via-b"]["ok"] is False
            assert checks["via-b"]["reason"] == "rejected: 503 Service Unavailable"
            assert checks["via-c"]["ok"] is False
            assert checks["via-c"]["reason"] == "answered, but no RTP received"

            st = json.loads(
                cli("status", "--json", "--socket", str(tmp_path / "control.sock")).stdout
            )
            t = st["targets"]
            assert t["call:via-a"]["state"] == "up"
            assert t["call:via-b"]["state"] == "down" and t["trunk:carrier-b"]["state"] == "up"
            paths = {p["name"]: p for p in st["routes"]["outbound"]["paths"]}
            assert paths["b"]["qualifies"] and paths["b"]["verified"] == "down"
            assert paths["b"]["proof"]["silent"] and not paths["a"]["proof"]["silent"]
            assert not paths["a"]["proof"]["unverified"]  # max_age: 24h by default
            assert sorted(st["alarms"]) == [
                "path b of outbound answers OPTIONS but fails calls (call:via-b)",
                "path c of outbound answers OPTIONS but fails calls (call:via-c)",
            ]

            silent = metric(http_port, "trunkguard_path_silent_failure")
            assert silent == {
                '{group="outbound",path="a"}': 0.0,
                '{group="outbound",path="b"}': 1.0,
                '{group="outbound",path="c"}': 1.0,
            }
            up = metric(http_port, "trunkguard_call_check_up")
            assert up['{call="via-a"}'] == 1.0 and up['{call="via-b"}'] == 0.0
            pdd = metric(http_port, "trunkguard_call_post_dial_delay_seconds")
            assert 0 < pdd['{call="via-a"}'] < 1.0
            loss = metric(http_port, "trunkguard_call_rtp_loss_ratio")
            assert loss['{call="via-a"}'] == 0.0
            # pjsua2's banner and logs never reach the agent's stdout.
            assert not any("pjlib" in line for line in agent.raw)
        finally:
            agent.stop()


async def test_a_child_that_crashes_or_hangs_is_a_failed_check_not_a_stalled_agent() -> None:
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    try:
        crash = await place({}, 5, (sys.executable, "-c", "import os; os.abort()"))
        assert not crash.ok and crash.reason.startswith("call check crashed (exit -6)")
        garbage = await place({}, 5, (sys.executable, "-c", "print('not json')"))
        assert not garbage.ok and "crashed (exit 0)" in garbage.reason
        before = ticks
        hung = await place({}, 1.0, (sys.executable, "-c", "import time; time.sleep(60)"))
        assert not hung.ok and hung.reason == "call check hung: killed after 1s"
        assert ticks - before >= 10  # the loop ran all along
        missing = await place({}, 5, ("/nonexistent/child",))
        assert not missing.ok and "could not start" in missing.reason
    finally:
        beat.cancel()


def test_a_call_check_never_takes_a_channel_kept_for_real_calls(tmp_path: Path) -> None:
    """Three channels through the SBC, one kept free: with two real calls up (counted by
    Kamailio's dialog module in the shipped config) the check is not placed, and
    nothing is judged; once they hang up, it is placed and passes."""
    with sbc_lab(tmp_path) as lab:
        k = lab.k
        cap = f', capacity: {{kamailio: "{k.unix_url}", channels: 3, keep_free: 1}}'
        agent = Agent(lab.config(via_sbc=cap))  # and every 1s
        try:
            agent.wait_for(Agent.applied("carrier-a"), 20, "initial route")
            first = agent.wait_for(
                Agent.call_checked("via-sbc"),
                30,
                "a first check",
            )
            assert first["ok"] is True
            d = tmp_path / "real"
            d.mkdir()
            target = f"127.0.0.1:{k.sip_port}"
            with calls.caller(
                d, target, ip="127.0.0.1", rate=10, duration_ms=4000, calls=2
            ) as real:
                procs.wait_for(lambda: k.rpc("dlg.stats_active")["all"] == 2, 10, "two calls up")
                mark = agent.mark()
                skipped = agent.wait_for(
                    lambda e: e.get("event") == "call check skipped", 10, "a skipped check", mark
                )
                assert skipped["reason"] == "2 of 3 channels in use, 1 kept for real calls"
                procs.wait_for(lambda: real.proc.poll() is not None, 30, "real calls done")
                assert [o.what for o in real.outcomes()].count("COMPLETED") == 2
            mark = agent.mark()
            again = agent.wait_for(
                Agent.call_checked("via-sbc"),
                15,
                "a check placed again",
                mark,
            )
            assert again["ok"] is True
            agent.drain()
            skips = [e for e in agent.events if e.get("event") == "call check skipped"]
            # No verdict while skipped: the check's target never went down.
            downs = [
                e
                for e in agent.events
                if e.get("event") == "target transition"
                and e.get("target") == "call:via-sbc"
                and e.get("new") == "down"
            ]
            assert skips and not downs
        finally:
            agent.stop()
