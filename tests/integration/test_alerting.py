"""An alert travelling from the agent to a person: the real agent probing two sipp
carriers, real Prometheus scraping it with the shipped rules, real Alertmanager with
the shipped example config (only its receivers' addresses and its timings changed),
and a webhook receiver standing for the NOC. Carrier A goes silent: the failover and
TrunkDown alerts arrive with the trunk, site and cause labels and a useful summary;
carrier A comes back: the resolution arrives."""

from __future__ import annotations

import socket
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.lib import procs, sipp
from tests.lib.agentproc import Agent
from tests.lib.prometheus import ALERTMANAGER_CONFIG, alertmanager, prometheus
from tests.lib.webhook import Received, receiver, wait_doc

pytestmark = pytest.mark.integration

Alert = dict[str, Any]


def wait_alert(
    got: Received, pred: Callable[[str, Alert], bool], timeout: float
) -> tuple[str, Alert]:
    """The first alert matching pred among those Alertmanager posts."""
    path, doc = wait_doc(got, lambda p, d: any(pred(p, a) for a in d["alerts"]), timeout)
    return path, next(a for a in doc["alerts"] if pred(path, a))


def am_config(port: int) -> dict[str, Any]:
    """The shipped example, pointed at our receiver, with test timings."""
    cfg = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for r in cfg["receivers"]:
        for w in r.get("webhook_configs", []):
            w["url"] = f"http://127.0.0.1:{port}/{r['name']}"
    routes = [cfg["route"], *cfg["route"].get("routes", [])]
    for r in routes:
        r["group_wait"], r["group_interval"] = "0s", "1s"
    return cfg


def test_failover_and_trunk_down_reach_a_person_and_resolve(tmp_path: Path) -> None:
    pa, pb = procs.free_port(), procs.free_port()
    metrics = procs.free_port(socket.SOCK_STREAM)
    cfg = tmp_path / "trunkguard.yaml"
    cfg.write_text(f"""\
site: dc1
node: sbc1
control: {{socket: {tmp_path}/control.sock}}
metrics: {{listen: "127.0.0.1:{metrics}"}}
probe: {{interval: 500ms, fast_interval: 200ms, timeout: 300ms, rise: 1, fall: 2}}
trunks:
  carrier-a: {{uri: "sip:127.0.0.1:{pa}"}}
  carrier-b: {{uri: "sip:127.0.0.1:{pb}"}}
routes:
  outbound:
    hold: 1h
    paths:
      - {{name: a, requires: [trunk:carrier-a]}}
      - {{name: b, requires: [trunk:carrier-b]}}
""")
    with (
        receiver() as (hook, got),
        sipp.options_responder(tmp_path, "127.0.0.1", pb),
        alertmanager(tmp_path, am_config(hook)) as am,
        prometheus(
            tmp_path,
            [f"127.0.0.1:{metrics}"],
            labels={"site": "dc1"},
            alertmanager=am.url.removeprefix("http://"),
        ) as prom,
        ExitStack() as carrier_a,
    ):
        carrier_a.enter_context(sipp.options_responder(tmp_path, "127.0.0.1", pa))
        agent = Agent(cfg)
        try:
            agent.wait_for(Agent.applied("a"), 20, "initial route")
            procs.wait_for(
                lambda: any(r["value"][1] == "1" for r in prom.query('up{job="trunkguard"}')),
                30,
                "the first scrape",
                step=0.2,
            )
            carrier_a.close()  # carrier A goes silent
            agent.wait_for(Agent.applied("b"), 20, "failover to b")

            path, a = wait_alert(
                got,
                lambda p, a: (
                    a["labels"]["alertname"] == "TrunkguardFailover" and a["status"] == "firing"
                ),
                30,
            )
            assert path == "/noc-webhook"
            assert a["labels"]["group"] == "outbound" and a["labels"]["site"] == "dc1"

            # TrunkDown has `for: 1m`: it arrives a minute after the trunk went down.
            path, a = wait_alert(
                got,
                lambda p, a: (
                    a["labels"]["alertname"] == "TrunkguardTrunkDown" and a["status"] == "firing"
                ),
                100,
            )
            labels = a["labels"]
            assert path == "/noc-webhook"  # a warning: not paged
            assert (labels["name"], labels["site"], labels["severity"]) == (
                "carrier-a",
                "dc1",
                "warning",
            )
            assert labels["cause"] == "refused"  # ICMP port unreachable on loopback
            assert a["annotations"]["summary"] == (
                f"SIP trunk carrier-a is down on 127.0.0.1:{metrics} (refused)"
            )

            carrier_a.enter_context(sipp.options_responder(tmp_path, "127.0.0.1", pa))
            path, a = wait_alert(
                got,
                lambda p, a: (
                    a["labels"]["alertname"] == "TrunkguardTrunkDown" and a["status"] == "resolved"
                ),
                60,
            )
            assert a["labels"]["name"] == "carrier-a" and a["endsAt"] > a["startsAt"]
        finally:
            agent.stop()
