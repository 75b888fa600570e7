"""The whole agent against real peers: sipp carriers behind veth links in namespaces,
the kernel routing table it changes, its CLI, metrics, and systemd notification."""

from __future__ import annotations

import json
import signal
import socket
import sys
from datetime import datetime
from pathlib import Path

import pytest

from tests.lib.agentproc import Agent, cli
from tests.lib.topology import GW_A, GW_B, two_carriers

pytestmark = pytest.mark.integration


def ts(ev: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(ev["timestamp"]).replace("Z", "+00:00"))


def test_failover_failback_operator_and_restart(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(15)
    with two_carriers(tmp_path) as lab:
        cfg = lab.config(hold="2s")
        sock = str(tmp_path / "control.sock")
        agent = Agent(
            cfg,
            netns=lab.agent.name,
            env={
                "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            },
        )
        try:
            assert b"READY=1" in notify.recv(4096)
            agent.wait_for(agent.applied("carrier-a"), 15, "initial route via carrier A")
            assert lab.gateway() == GW_A

            # Carrier A goes silent (no ICMP, the deadline path): the route moves to B.
            mark = agent.mark()
            lab.carrier_a.drop_udp_in(5060)
            down = agent.wait_for(
                agent.transition("trunk:carrier-a", "down"),
                15,
                "carrier A down",
                since=mark,
            )
            assert "3 consecutive failures" in down["reason"] and "timeout" in down["reason"]
            agent.wait_for(agent.applied("carrier-b"), 5, "route via carrier B", since=mark)
            assert lab.gateway() == GW_B

            # A recovers: failback only after `hold` of continuous health.
            mark = agent.mark()
            lab.carrier_a.undrop()
            up = agent.wait_for(
                agent.transition("trunk:carrier-a", "up"),
                15,
                "carrier A up",
                since=mark,
            )
            back = agent.wait_for(
                lambda e: e.get("event") == "route change" and e.get("kind") == "failback",
                15,
                "failback",
                since=mark,
            )
            assert (ts(back) - ts(up)).total_seconds() >= 2.0 - 0.05
            agent.wait_for(agent.applied("carrier-a"), 5, "route back via A", since=mark)
            assert lab.gateway() == GW_A

            # Operator: status, pin to B, failback, maintenance; bad input is one line.
            st = cli("status", "--socket", sock, "--json", netns=lab.agent.name)
            assert st.returncode == 0, st.stderr
            status = json.loads(st.stdout)
            assert status["routes"]["outbound"]["active"] == "carrier-a"
            assert status["targets"]["trunk:carrier-b"]["state"] == "up"
            table = cli("status", "--socket", sock, netns=lab.agent.name)
            assert "outbound" in table.stdout and "trunk:carrier-a" in table.stdout
            mark = agent.mark()
            r = cli("failover", "outbound", "carrier-b", "--socket", sock, netns=lab.agent.name)
            assert r.returncode == 0 and "outbound=carrier-b" in r.stdout, r.stderr
            agent.wait_for(agent.applied("carrier-b"), 5, "pinned to B", since=mark)
            assert lab.gateway() == GW_B
            r = cli("failover", "outbound", "nowhere", "--socket", sock, netns=lab.agent.name)
            assert (
                r.returncode == 1
                and r.stderr.strip() == "trunkguard: group outbound has no path 'nowhere'"
            )
            mark = agent.mark()
            r = cli("failback", "outbound", "--socket", sock, netns=lab.agent.name)
            assert r.returncode == 0, r.stderr
            agent.wait_for(agent.applied("carrier-a"), 5, "failback by operator", since=mark)
            mark = agent.mark()
            r = cli("maintenance", "carrier-a", "on", "--socket", sock, netns=lab.agent.name)
            assert r.returncode == 0, r.stderr
            agent.wait_for(agent.applied("carrier-b"), 5, "maintenance moves traffic", since=mark)
            r = cli("maintenance", "carrier-a", "off", "--socket", sock, netns=lab.agent.name)
            assert r.returncode == 0, r.stderr

            metrics = lab.agent.sh(
                sys.executable,
                "-c",
                "import urllib.request;print(urllib.request."
                "urlopen('http://127.0.0.1:9464/metrics').read().decode())",
            ).stdout
            assert 'trunkguard_failovers_total{group="outbound"} 2.0' in metrics
            assert 'trunkguard_route_active_path{group="outbound",path="carrier-a"}' in metrics
            assert 'trunkguard_target_up{kind="trunk",name="carrier-b"} 1.0' in metrics
            assert "trunkguard_sip_options_rtt_seconds_bucket" in metrics
        finally:
            rc = agent.stop()
        assert rc == 0
        # Fail-static: stopping leaves routing exactly as it was.
        gw_at_stop = lab.gateway()
        assert gw_at_stop in (GW_A, GW_B)

        # Restart: routing is not touched before every target has a first verdict, and
        # the persisted active path is kept (no initial flap).
        agent = Agent(cfg, netns=lab.agent.name)
        try:
            agent.wait_for(
                agent.transition("trunk:carrier-b"),
                15,
                "first verdict",
            )
            agent.wait_for(
                agent.transition("trunk:carrier-a"),
                15,
                "first verdict",
            )
            assert lab.gateway() == gw_at_stop
        finally:
            assert agent.stop() == 0
        # The restored path was kept: no fresh "initial" choice was made.
        assert not [e for e in agent.events if e.get("kind") == "initial"]
    notify.close()


def test_reload_rejects_bad_config_and_applies_good(tmp_path: Path) -> None:
    with two_carriers(tmp_path) as lab:
        cfg = lab.config(hold="1s")
        agent = Agent(cfg, netns=lab.agent.name)
        try:
            agent.wait_for(agent.applied("carrier-a"), 15, "initial route")
            good = cfg.read_text()
            cfg.write_text(good.replace("hold: 1s", "hold: 1"))
            mark = agent.mark()
            agent.signal(signal.SIGHUP)
            bad = agent.wait_for(
                lambda e: e.get("event") == "reload rejected, keeping the running config",
                10,
                "reload rejected",
                since=mark,
            )
            assert "routes.outbound.hold" in bad["problem"]
            cfg.write_text(good.replace("fall: 3", "fall: 1"))
            mark = agent.mark()
            agent.signal(signal.SIGHUP)
            agent.wait_for(lambda e: e.get("event") == "config reloaded", 10, "reload", since=mark)
            # Still probing and routing after the reload; a single lost probe now fails over.
            mark = agent.mark()
            lab.carrier_a.drop_udp_in(5060)
            down = agent.wait_for(
                lambda e: e.get("event") == "target transition" and e.get("new") == "down",
                10,
                "down after reload",
                since=mark,
            )
            assert "1 consecutive failures" in down["reason"]
            agent.wait_for(agent.applied("carrier-b"), 5, "failover after reload", since=mark)
            assert lab.gateway() == GW_B
        finally:
            assert agent.stop() == 0
