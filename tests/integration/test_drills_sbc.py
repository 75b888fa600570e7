"""Every drill scenario end to end through the shipped Kamailio SBC config: the real
daemon steering Kamailio's dispatcher, synthetic calls (pjsua2) through Kamailio to
sipp carriers that echo RTP, and to the remote site. Each drill passes with its calls,
its timings agree with the daemon's own events, and Kamailio's dispatcher is read back
as it was found. A drill whose call fails on the new path restores at once; a
scheduled drill waits until the site is healthy."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.lib import calls
from tests.lib.agentproc import Agent
from tests.lib.mosquitto import broker
from tests.lib.sbclab import SbcLab, sbc_lab, uri
from trunkguard.noc import keygen

pytestmark = pytest.mark.integration


def drill(lab: SbcLab, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "trunkguard", "drill", "--socket", str(lab.socket), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def ready(lab: SbcLab, agent: Agent) -> None:
    """Routing on carrier-a and both call checks passed once."""
    agent.wait_for(Agent.applied("carrier-a"), 20, "initial route")
    agent.checks_passed("via-sbc", "via-site")
    agent.wait_for(
        lambda e: e.get("event") == "target transition" and e.get("target") == "trunk:site-b",
        20,
        "the remote site up",
    )


def run_drill(lab: SbcLab, agent: Agent, scenario: str) -> tuple[dict[str, Any], list[Any]]:
    mark = agent.mark()
    res = drill(lab, scenario, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    agent.drain()
    return json.loads(res.stdout), agent.events[mark:]


@pytest.mark.parametrize("scenario", ["carrier", "platform", "site", "cooling"])
def test_each_drill_through_the_sbc_with_calls_leaves_kamailio_as_found(
    tmp_path: Path, scenario: str
) -> None:
    with sbc_lab(tmp_path) as lab:
        agent = Agent(lab.config())
        try:
            ready(lab, agent)
            before = lab.dispatcher()
            a, b = (uri(lab.ports[n]) for n in ("a", "b"))
            assert before[1][a].startswith("A") and before[1][b].startswith("D")
            mark = lab.log_mark()
            r, evs = run_drill(lab, agent, scenario)
            assert r["result"] == "passed", r
            assert r["left_as_found"] is True and r["routing_after"] == "carrier-a"
            assert r["settings"]["group"] == "failback auto, hold 30s"
            assert r["settings"]["probe"].startswith("every 1s (fast 0.2s), timeout 0.5s")
            want = {"carrier": "carrier-b", "platform": "remote"}.get(scenario, "remote")
            assert r["new"] == want
            assert lab.dispatcher() == before  # Kamailio, read back: as found

            # The calls: through Kamailio to the new carrier, or to the remote site.
            new, back = r["calls"]["new_path"], r["calls"]["restored_path"]
            assert new["ok"] and new["path"] == want and back["ok"]
            assert back["path"] == "carrier-a" and back["check"] == "call:via-sbc"
            sbc_log = lab.log_since(mark)
            if scenario == "carrier":
                assert f"dispatch: INVITE sip:echo@127.0.0.1:{lab.k.sip_port} -> {b}" in sbc_log
            assert f"-> {a}" in sbc_log  # the call through the restored path

            # Timings consistent with the daemon's own events, each labelled.
            p = r["phases"]
            assert 0 <= p["decision"] <= p["applied"] <= p["call_new_path"] <= p["restored"]
            assert p["restored"] <= p["total"] < 30
            changes = [e["new"] for e in evs if e.get("event") == "route change"]
            assert changes == [want, "carrier-a"]
            labelled = [
                e
                for e in evs
                if e.get("event") in ("target transition", "site", "sensor level")
                and "drill" in str(e.get("reason", ""))
            ]
            assert labelled, [e.get("event") for e in evs]
            if scenario == "cooling":
                assert "room" in r["inject"] and "detected" in p
                assert p["detected"] <= p["decision"]
                assert r["detected"] == "room 33C critical (drill)"
            if scenario == "platform":
                assert r["inject"] == "trunk:sbc in maintenance (drill)"
            st = json.loads(drill_status(lab))
            assert st["evacuation"]["state"] == "normal"
            assert st["sensors"]["room"]["value"] == 22.0  # the real reading again
            # Nothing of the drill was persisted.
            state = json.loads((tmp_path / "state" / "state.json").read_text())
            assert state["maintenance"] == [] and state["evacuating"] is False
        finally:
            agent.stop()


def drill_status(lab: SbcLab) -> str:
    argv = [sys.executable, "-m", "trunkguard", "status", "--json", "--socket", str(lab.socket)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return res.stdout


def test_a_failed_call_on_the_new_path_restores_at_once(tmp_path: Path) -> None:
    """Carrier B answers OPTIONS but refuses calls: the drill fails at the call through
    it, restores at once, and Kamailio is left as it was found."""
    with sbc_lab(tmp_path, b_scenario=calls.REJECTS_CALLS) as lab:
        agent = Agent(lab.config())
        try:
            ready(lab, agent)
            before = lab.dispatcher()
            mark = agent.mark()
            res = drill(lab, "carrier", "--json")
            assert res.returncode == 1, res.stderr
            r = json.loads(res.stdout)
            assert r["result"] == "failed"
            # B's 503 comes back through Kamailio as 500 (a proxy does not pass 503 on).
            assert r["aborted"].startswith("the call through carrier-b failed: rejected: 500")
            assert r["left_as_found"] and r["routing_after"] == "carrier-a"
            assert "restored_path" not in r["calls"]
            assert lab.dispatcher() == before
            agent.drain()
            changes = [e["new"] for e in agent.events[mark:] if e.get("event") == "route change"]
            assert changes == ["carrier-b", "carrier-a"]
        finally:
            agent.stop()


def test_scheduled_drill_waits_for_a_healthy_site(tmp_path: Path) -> None:
    """Due every 2 s: skipped (once per reason) while carrier B is down, run once B is
    back, and the time it ran kept in state_dir/drills.json."""
    with sbc_lab(tmp_path, start_b=False) as lab:
        schedule = "    - {scenario: carrier, group: outbound, every: 2s}\n"
        agent = Agent(lab.config(schedule=schedule))
        try:
            skipped = agent.wait_for(
                lambda e: e.get("event") == "scheduled drill skipped", 30, "a skipped drill"
            )
            assert skipped["scenario"] == "carrier"
            assert skipped["reason"].startswith("trunk:carrier-b is")
            with lab.party("b"):
                done = agent.wait_for(lambda e: e.get("event") == "drill done", 60, "the drill")
                assert done["result"] == "passed", done
            agent.drain()
            by = [e for e in agent.events if e.get("event") == "drill"]
            assert by and by[0]["by"] == "schedule"
            reasons = [
                e["reason"] for e in agent.events if e.get("event") == "scheduled drill skipped"
            ]
            assert len(reasons) == len(set(reasons))  # each reason said once
            ran = json.loads((tmp_path / "state" / "drills.json").read_text())
            assert set(ran) == {"carrier:outbound"}
        finally:
            agent.stop()


def test_drill_by_signed_command_with_its_report_and_alarms_on_mqtt(tmp_path: Path) -> None:
    """The NOC runs a drill with a signed command and gets the report back over MQTT;
    a key without the `drill` right is refused. The retained `alarms` topic shows a
    backup whose proof is older than its max_age."""
    keys = tmp_path / "keys"
    keys.mkdir()
    keygen(str(keys / "noc"))
    keygen(str(keys / "ops"))
    with sbc_lab(tmp_path) as lab, broker(tmp_path) as mq:
        extra = f"""\
mqtt: {{host: 127.0.0.1, port: {mq.port}, keepalive: 2s}}
commands:
  keys:
    noc: {{public_key_file: {keys}/noc.pub, allow: [read, drill]}}
    ops: {{public_key_file: {keys}/ops.pub, allow: [read, routing]}}
"""
        agent = Agent(lab.config(extra, max_age="3s"))
        try:
            ready(lab, agent)
            before = lab.dispatcher()

            def noc(key: str, *args: str) -> subprocess.CompletedProcess[str]:
                argv = [sys.executable, "-m", "trunkguard", "drill", *args, "--site", "lab"]
                argv += ["--node", "sbc1", "--broker", f"mqtt://127.0.0.1:{mq.port}"]
                argv += ["--key", str(keys / f"{key}.key")]
                return subprocess.run(argv, capture_output=True, text=True, timeout=120)

            refused = noc("ops", "carrier")
            assert refused.returncode == 1
            assert "refused (forbidden): key ops may not use drill" in refused.stdout

            res = noc("noc", "carrier", "--json", "--report-dir", str(tmp_path / "reports"))
            assert res.returncode == 0, res.stdout + res.stderr
            r = json.loads(res.stdout)
            assert r["result"] == "passed" and r["new"] == "carrier-b" and r["left_as_found"]
            assert lab.dispatcher() == before
            md = next((tmp_path / "reports").glob("drill-*.md")).read_text()
            assert f"# Drill {r['id']}: carrier on route group outbound" in md

            async def retained() -> dict[str, Any]:
                got: dict[str, Any] = {}
                async with aiomqtt.Client("127.0.0.1", mq.port) as c:
                    await c.subscribe("trunkguard/lab/sbc1/#")
                    async with asyncio.timeout(15):
                        async for m in c.messages:
                            t = str(m.topic).removeprefix("trunkguard/lab/sbc1/")
                            got[t] = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                            if (
                                "drills/last" in got
                                and len(got.get("alarms", {}).get("alarms", [])) == 3
                            ):
                                break
                return got

            # The drill's calls proved the carrier paths; 3 s later (max_age) no proof of
            # any path is fresh, and the remote path's went first.
            got = asyncio.run(retained())
            assert got["drills/last"]["id"] == r["id"]
            assert sorted(got["alarms"]["alarms"]) == [
                "path carrier-a of outbound unverified: no passing call in 3s",
                "path carrier-b of outbound unverified: no passing call in 3s",
                "path remote of outbound unverified: no passing call in 3s",
            ]
            alarm = agent.wait_for(lambda e: e.get("event") == "alarm", 10, "alarm logged")
            assert "unverified" in alarm["alarm"]
            # The NOC's fleet view shows them under the node.
            fleet = subprocess.run(
                [sys.executable, "-m", "trunkguard", "fleet", "--broker",
                 f"mqtt://127.0.0.1:{mq.port}"],
                capture_output=True, text=True, timeout=60, check=True,
            ).stdout  # fmt: skip
            assert "ALARM: path remote of outbound unverified: no passing call in 3s" in fleet
        finally:
            agent.stop()
