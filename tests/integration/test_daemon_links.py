"""Links through the whole agent: veth uplinks in namespaces lose carrier, go admin
down and lose their address; trunks behind them go down at once, the route moves,
and routes the kernel deleted with the link come back when it returns."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lib import procs
from tests.lib.agentproc import Agent, cli
from tests.lib.topology import GW_A, GW_B, Lab, two_carriers

pytestmark = pytest.mark.integration

MGMT = "198.18.0.0/24"  # a route through uplink A that no failover decision moves


def config(lab: Lab) -> Path:
    mgmt = f"""\
  mgmt:
    paths:
      - name: via-a
        actions: {{netlink: [{{dst: {MGMT}, gateway: {GW_A}}}]}}
actuators: {{drift_interval: 1m, backoff_max: 1m}}
"""
    return lab.config(hold="1s", links=True, extra=mgmt)


def route_present(lab: Lab, prefix: str) -> bool:
    return bool(json.loads(lab.agent.ip("-j", "route", "show", prefix).stdout or "[]"))


def fail_and_return(
    agent: Agent,
    lab: Lab,
    down_reason: str,
    *,
    break_it: Callable[[], object],
    fix_it: Callable[[], object],
) -> None:
    """Break uplink A: link and trunk down at once, route to B; fix it: back to A."""
    mark = agent.mark()
    break_it()
    link = agent.wait_for(agent.transition("link:uplink-a", "down"), 5, "link down", mark)
    assert down_reason in link["reason"], link
    trunk = agent.wait_for(agent.transition("trunk:carrier-a", "down"), 5, "trunk down", mark)
    # Down with the link, not after 3 failed probes. The kernel announces a carrier loss
    # up to ~1 s late (linkwatch), and probes failing with ENOBUFS may win that race.
    if agent.events.index(trunk) > agent.events.index(link):
        assert trunk["reason"].startswith("link:uplink-a down"), trunk
    agent.wait_for(agent.applied("carrier-b"), 5, "route via carrier B", mark)
    assert lab.gateway() == GW_B

    mark = agent.mark()
    fix_it()
    up = agent.wait_for(agent.transition("link:uplink-a", "up"), 10, "link up", mark)
    assert "up for 1s" in up["reason"]
    agent.wait_for(agent.transition("trunk:carrier-a", "up"), 10, "trunk up", mark)
    agent.wait_for(agent.applied("carrier-a"), 10, "route back via carrier A", mark)
    assert lab.gateway() == GW_A


def test_carrier_loss_admin_down_and_address_removal(tmp_path: Path) -> None:
    with two_carriers(tmp_path) as lab:
        if_a, peer_a = lab.links["a"]
        agent = Agent(config(lab), netns=lab.agent.name)
        try:
            agent.wait_for(agent.applied("carrier-a"), 15, "initial route via carrier A")
            agent.wait_for(agent.applied("via-a"), 5, "management route")
            assert route_present(lab, MGMT)

            # The carrier's side of the cable goes dead: we lose carrier.
            fail_and_return(
                agent,
                lab,
                "no carrier",
                break_it=lambda: lab.carrier_a.ip("link", "set", peer_a, "down"),
                fix_it=lambda: lab.carrier_a.ip("link", "set", peer_a, "up"),
            )

            # Admin down: the kernel deletes every route through the interface, including
            # the management route no decision touches; it must come back with the link.
            def admin_down() -> None:
                lab.agent.ip("link", "set", if_a, "down")
                assert not route_present(lab, MGMT)

            fail_and_return(
                agent,
                lab,
                "administratively down",
                break_it=admin_down,
                fix_it=lambda: lab.agent.ip("link", "set", if_a, "up"),
            )
            procs.wait_for(lambda: route_present(lab, MGMT), 3, "management route restored")

            # The address goes (DHCP lease lost, operator error).
            fail_and_return(
                agent,
                lab,
                "no IPv4 address",
                break_it=lambda: lab.agent.ip("addr", "del", "192.0.2.2/24", "dev", if_a),
                fix_it=lambda: lab.agent.ip("addr", "add", "192.0.2.2/24", "dev", if_a),
            )

            # Operator maintenance on a link works like on a trunk.
            sock = str(tmp_path / "control.sock")
            mark = agent.mark()
            res = cli("maintenance", "uplink-a", "on", "--socket", sock, netns=lab.agent.name)
            assert res.returncode == 0, res.stderr
            agent.wait_for(agent.applied("carrier-b"), 5, "route via B in maintenance", mark)
            st = json.loads(cli("status", "--json", "--socket", sock, netns=lab.agent.name).stdout)
            assert st["links"]["link:uplink-a"]["state"] == "maintenance"
            assert st["links"]["link:uplink-a"]["kernel"] == "up"
            assert st["targets"]["trunk:carrier-a"]["state"] == "down"
        finally:
            assert agent.stop() == 0
