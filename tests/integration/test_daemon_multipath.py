"""A multipath route group through the whole agent: calls spread over both carriers by
weight; a dead carrier leaves the multipath route at once and rejoins after `hold`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lib.agentproc import Agent
from tests.lib.topology import GW_A, GW_B, PREFIX, Lab, two_carriers

pytestmark = pytest.mark.integration


def config(lab: Lab) -> Path:
    path = lab.tmp / "trunkguard.yaml"
    path.write_text(f"""\
site: lab
node: agent
control: {{socket: {lab.tmp}/control.sock}}
metrics: null
probe: {{interval: 1s, fast_interval: 200ms, timeout: 500ms, rise: 2, fall: 3}}
trunks:
  carrier-a: {{uri: "sip:{GW_A}:5060"}}
  carrier-b: {{uri: "sip:{GW_B}:5060"}}
routes:
  outbound:
    mode: multipath
    hold: 1s
    paths:
      - name: carrier-a
        requires: [trunk:carrier-a]
        actions: {{netlink: [{{dst: {PREFIX}, gateway: {GW_A}, weight: 3}}]}}
      - name: carrier-b
        requires: [trunk:carrier-b]
        actions: {{netlink: [{{dst: {PREFIX}, gateway: {GW_B}}}]}}
""")
    return path


def nexthops(lab: Lab) -> set[tuple[str, int]]:
    """(gateway, weight) of the kernel's route, read independently with ip -j."""
    routes = json.loads(lab.agent.ip("-j", "route", "show", PREFIX).stdout or "[]")
    assert len(routes) == 1, routes
    r = routes[0]
    if "nexthops" in r:
        return {(h["gateway"], h.get("weight", 1)) for h in r["nexthops"]}
    return {(r["gateway"], 1)}


def test_multipath_spreads_and_drops_a_dead_carrier(tmp_path: Path) -> None:
    with two_carriers(tmp_path) as lab:
        agent = Agent(config(lab), netns=lab.agent.name)
        try:
            agent.wait_for(agent.applied("carrier-a+carrier-b"), 15, "multipath route")
            assert nexthops(lab) == {(GW_A, 3), (GW_B, 1)}

            mark = agent.mark()
            lab.carrier_a.drop_udp_in(5060)
            change = agent.wait_for(
                lambda e: e.get("event") == "route change" and e.get("new") == "carrier-b",
                15,
                "carrier A leaves",
                mark,
            )
            assert change["kind"] == "failover" and "carrier-a lost" in change["reason"]
            agent.wait_for(agent.applied("carrier-b"), 5, "plain route via B", mark)
            assert nexthops(lab) == {(GW_B, 1)}

            mark = agent.mark()
            lab.carrier_a.undrop()
            back = agent.wait_for(agent.applied("carrier-a+carrier-b"), 15, "A rejoins", mark)
            assert back["path"] == "carrier-a+carrier-b"
            assert nexthops(lab) == {(GW_A, 3), (GW_B, 1)}
        finally:
            assert agent.stop() == 0
