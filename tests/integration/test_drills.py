"""A carrier drill end to end: the real daemon in a namespace with two carrier links,
synthetic calls (pjsua2) through each path to sipp carriers that echo RTP, the kernel
route read back. The report's timings follow the daemon's own events, routing is left
as found, a second drill while one runs is refused, and so is a drill during a real
outage. The HTML report is loaded in headless Chromium and kept as an artifact."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lib.agentproc import Agent
from tests.lib.topology import GW_A, two_carriers

pytestmark = pytest.mark.integration


def drill(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "trunkguard", "drill", "--socket", str(tmp / "control.sock")]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120, check=False)


def test_carrier_drill_with_calls_leaves_routing_as_found(tmp_path: Path) -> None:
    with two_carriers(tmp_path) as lab:
        cfg = lab.config(hold="30s")
        lab.with_call_checks(cfg, tone=True)
        with lab.call_carriers():
            agent = Agent(cfg, netns=lab.agent.name)
            try:
                agent.wait_for(Agent.applied("carrier-a"), 20, "initial route")
                agent.checks_passed("via-a", "via-b")

                # A dry run plans and touches nothing.
                dry = drill(tmp_path, "carrier", "--dry-run", "--json")
                assert dry.returncode == 0, dry.stderr
                plan = json.loads(dry.stdout)
                assert plan["result"] == "planned" and plan["inject"].startswith("trunk:carrier-a")

                mark = agent.mark()
                first = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "trunkguard",
                        "drill",
                        "--socket",
                        str(tmp_path / "control.sock"),
                        "carrier",
                        "--json",
                        "--report-dir",
                        str(tmp_path / "reports"),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                agent.wait_for(lambda e: e.get("event") == "drill", 10, "drill started", mark)
                second = drill(tmp_path, "carrier")
                assert second.returncode == 1 and "is running: one at a time" in second.stderr
                out, err = first.communicate(timeout=120)
                assert first.returncode == 0, out + err
                r = json.loads(out)
                assert r["result"] == "passed" and r["left_as_found"] is True
                assert (r["original"], r["new"], r["routing_after"]) == (
                    "carrier-a",
                    "carrier-b",
                    "carrier-a",
                )
                p = r["phases"]
                assert 0 <= p["decision"] <= p["applied"] <= p["call_new_path"] <= p["restored"]
                assert p["restored"] <= p["total"] < 20
                assert (
                    r["calls"]["new_path"]["ok"] and r["calls"]["new_path"]["path"] == "carrier-b"
                )
                assert r["calls"]["restored_path"]["path"] == "carrier-a"
                assert lab.gateway() == GW_A  # the kernel, read back: as found

                # The daemon's own events agree, and say "drill".
                agent.drain()
                evs = agent.events[mark:]
                drilled = [
                    e
                    for e in evs
                    if e.get("event") == "target transition" and "(drill)" in e.get("reason", "")
                ]
                assert [e["new"] for e in drilled] == ["maintenance", "up"]
                changes = [e for e in evs if e.get("event") == "route change"]
                assert [c["new"] for c in changes] == ["carrier-b", "carrier-a"]

                # The reports: Markdown for the ticket, HTML for the auditor.
                md = next((tmp_path / "reports").glob("*.md")).read_text()
                assert "**passed**" in md and "by hand" in md
                page = next((tmp_path / "reports").glob("*.html"))
                shot = tmp_path / "drill-report.png"
                res = subprocess.run(
                    [
                        "chromium",
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        f"--user-data-dir={tmp_path / 'chromium'}",
                        "--window-size=1000,700",
                        f"--screenshot={shot}",
                        f"file://{page}",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=90,
                    check=False,
                )
                assert res.returncode == 0, res.stderr[-1500:]
                png = shot.read_bytes()
                assert png[:8] == b"\x89PNG\r\n\x1a\n"
                assert struct.unpack(">II", png[16:24]) == (1000, 700)

                # A real outage: carrier B silent. No drill now.
                mark = agent.mark()
                lab.carrier_b.drop_udp_in(5060)
                agent.wait_for(Agent.transition("trunk:carrier-b", "down"), 15, "b down", mark)
                refused = drill(tmp_path, "carrier")
                assert refused.returncode == 1
                assert "no other path of outbound qualifies" in refused.stderr
            finally:
                agent.stop()


def test_link_drill_takes_the_uplink_out_and_puts_it_back(tmp_path: Path) -> None:
    with two_carriers(tmp_path) as lab:
        agent = Agent(lab.config(hold="30s", links=True), netns=lab.agent.name)
        try:
            agent.wait_for(Agent.applied("carrier-a"), 20, "initial route")
            mark = agent.mark()
            res = drill(tmp_path, "link", "--json")
            assert res.returncode == 0, res.stdout + res.stderr
            r = json.loads(res.stdout)
            assert r["inject"] == "link:uplink-a in maintenance (drill)"
            assert r["result"] == "passed" and r["left_as_found"] and r["new"] == "carrier-b"
            assert r["calls"] == {}  # no call check configured: none placed
            assert lab.gateway() == GW_A
            agent.drain()
            trunk_a = [
                e["new"]
                for e in agent.events[mark:]
                if e.get("event") == "target transition" and e.get("target") == "trunk:carrier-a"
            ]
            assert trunk_a == ["down", "up"]  # through the link, as a real link failure
        finally:
            agent.stop()
