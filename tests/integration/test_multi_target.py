"""A trunk named by DNS with two SRV targets, through the real daemon: when one target
dies, `healthy_when: any` stays up and `all` goes down; each target is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lib import procs, sipp
from tests.lib.agentproc import Agent, cli
from tests.lib.dnsmasq import dns_server

pytestmark = pytest.mark.integration


def test_any_stays_up_all_goes_down(tmp_path: Path) -> None:
    p1, p2 = procs.free_port(), procs.free_port()
    records = [
        f"srv-host=_sip._udp.carrier.test,a.carrier.test,{p1},10,50",
        f"srv-host=_sip._udp.carrier.test,a.carrier.test,{p2},10,50",
        "host-record=a.carrier.test,127.0.0.1",
        "local-ttl=60",
    ]
    with (
        dns_server(tmp_path, records=records) as dns,
        sipp.options_responder(tmp_path, "127.0.0.1", p1) as first,
        sipp.options_responder(tmp_path, "127.0.0.1", p2),
    ):
        cfg = tmp_path / "trunkguard.yaml"
        cfg.write_text(f"""\
site: lab
node: dns
control: {{socket: {tmp_path}/control.sock}}
metrics: null
probe: {{interval: 1s, fast_interval: 200ms, timeout: 500ms, rise: 1, fall: 2}}
sip:
  dns: {{nameservers: [{dns.host}], port: {dns.port}, timeout: 1s}}
trunks:
  either: {{uri: "sip:carrier.test;transport=udp", healthy_when: any}}
  both: {{uri: "sip:carrier.test;transport=udp", healthy_when: all}}
  ghost: {{uri: "sip:nowhere.test"}}
routes:
  outbound:
    paths:
      - {{name: both, requires: [trunk:both]}}
      - {{name: either, requires: [trunk:either]}}
""")
        agent = Agent(cfg)
        try:
            ghost = agent.wait_for(
                agent.transition("trunk:ghost"),
                15,
                "unresolvable trunk verdict",
            )
            assert ghost["new"] == "down" and "dns: nowhere.test" in ghost["reason"]
            agent.wait_for(agent.applied("both"), 15, "route via the all-targets trunk")
            status = json.loads(
                cli("status", "--socket", f"{tmp_path}/control.sock", "--json").stdout
            )
            targets = status["targets"]["trunk:both"]["targets"]
            assert set(targets) == {f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"}

            mark = agent.mark()
            procs.stop(first)  # one SRV target dies (ICMP port unreachable)
            down = agent.wait_for(
                agent.transition("trunk:both", "down"),
                10,
                "all-trunk down",
                since=mark,
            )
            assert "1 of 2 destinations up (healthy_when all)" in down["reason"]
            agent.wait_for(agent.applied("either"), 5, "failover to the any-trunk", since=mark)
            dest = agent.wait_for(
                lambda e: (
                    e.get("event") == "destination transition"
                    and e.get("target") == "trunk:either"
                    and e.get("new") == "down"
                ),
                5,
                "per-target report",
                since=mark,
            )
            assert dest["dest"] == f"127.0.0.1:{p1}"
            status = json.loads(
                cli("status", "--socket", f"{tmp_path}/control.sock", "--json").stdout
            )
            assert status["targets"]["trunk:either"]["state"] == "up"
            assert status["targets"]["trunk:both"]["state"] == "down"
        finally:
            assert agent.stop() == 0
        assert not [
            e
            for e in agent.events
            if e.get("target") == "trunk:either"
            and e.get("event") == "target transition"
            and e.get("new") == "down"
        ]
