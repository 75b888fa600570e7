"""The daemon's MQTT contract against a real mosquitto: retained status/state/trunks/routes,
events on a failover, and the Last Will when the agent dies."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiomqtt
import pytest

from tests.lib import procs, sipp
from tests.lib.agentproc import Agent
from tests.lib.mosquitto import broker

pytestmark = pytest.mark.integration

AGENT_USER, AGENT_PW = "tg-dc1", "agent-Secret-42"
NOC, NOC_PW = "noc", "noc-pw"
BASE = "trunkguard/dc1/sbc1"


def config(tmp: Path, port: int, port_a: int, port_b: int) -> Path:
    (tmp / "mqtt.pass").write_text(AGENT_PW + "\n")
    cfg = tmp / "trunkguard.yaml"
    cfg.write_text(f"""\
site: dc1
node: sbc1
control: {{socket: {tmp}/control.sock}}
metrics: null
probe: {{interval: 1s, fast_interval: 200ms, timeout: 500ms, rise: 2, fall: 2}}
trunks:
  carrier-a: {{uri: "sip:127.0.0.1:{port_a}"}}
  carrier-b: {{uri: "sip:127.0.0.1:{port_b}"}}
routes:
  outbound:
    hold: 1m
    paths:
      - {{name: carrier-a, requires: [trunk:carrier-a]}}
      - {{name: carrier-b, requires: [trunk:carrier-b]}}
mqtt:
  host: 127.0.0.1
  port: {port}
  username: {AGENT_USER}
  password_file: {tmp}/mqtt.pass
  keepalive: 1s
""")
    return cfg


async def read_until(client: aiomqtt.Client, done: object, within: float) -> dict[str, bytes]:
    """Collect the latest payload per topic until done(latest) holds."""
    latest: dict[str, bytes] = {}
    async with asyncio.timeout(within):
        async for msg in client.messages:
            latest[str(msg.topic)] = bytes(msg.payload)  # type: ignore[arg-type]
            if done(latest):  # type: ignore[operator]
                return latest
    raise AssertionError("unreachable")


def status(latest: dict[str, bytes]) -> object:
    raw = latest.get(f"{BASE}/status")
    return None if raw is None else json.loads(raw).get("status")


def js(latest: dict[str, bytes], topic: str) -> dict[str, object]:
    return json.loads(latest[f"{BASE}/{topic}"])  # type: ignore[no-any-return]


async def test_retained_state_events_and_last_will(tmp_path: Path) -> None:
    port_a, port_b = procs.free_port(), procs.free_port()
    with (
        broker(tmp_path, users={AGENT_USER: AGENT_PW, NOC: NOC_PW}) as mq,
        sipp.options_responder(tmp_path, "127.0.0.1", port_a) as carrier_a,
        sipp.options_responder(tmp_path, "127.0.0.1", port_b),
    ):
        agent = Agent(config(tmp_path, mq.port, port_a, port_b))
        try:
            await asyncio.to_thread(agent.wait_for, agent.applied("carrier-a"), 15, "initial route")
            # A NOC client subscribing later sees the retained picture.
            async with aiomqtt.Client(mq.host, mq.port, username=NOC, password=NOC_PW) as c:
                await c.subscribe(f"{BASE}/#", qos=1)
                latest = await read_until(
                    c,
                    lambda m: (
                        f"{BASE}/routes/outbound" in m
                        and f"{BASE}/trunks/carrier-b" in m
                        and json.loads(m.get(f"{BASE}/state", b"{}"))
                        .get("routes", {})
                        .get("outbound", {})
                        .get("active")
                        == "carrier-a"
                        and status(m) == "online"
                    ),
                    10,
                )
                state = js(latest, "state")
                assert state["schema"] == 1 and isinstance(state["seq"], int)
                assert state["routes"]["outbound"]["active"] == "carrier-a"  # type: ignore[index]
                assert js(latest, "routes/outbound")["active"] == "carrier-a"
                assert js(latest, "trunks/carrier-a")["state"] == "up"
                seq0 = state["seq"]

                # Carrier A dies (sipp stops: ICMP port unreachable, the fast path).
                procs.stop(carrier_a)
                latest = await read_until(
                    c,
                    lambda m: (
                        json.loads(m.get(f"{BASE}/routes/outbound", b"{}")).get("active")
                        == "carrier-b"
                        and f"{BASE}/events" in m
                        and json.loads(m.get(f"{BASE}/state", b"{}"))
                        .get("routes", {})
                        .get("outbound", {})
                        .get("active")
                        == "carrier-b"
                    ),
                    10,
                )
                assert js(latest, "state")["seq"] > seq0  # type: ignore[operator]
                event = js(latest, "events")
                assert event["type"] in ("transition", "route")

            # The agent dies without a goodbye: the broker publishes its Will.
            agent.signal(signal.SIGKILL)
            async with aiomqtt.Client(mq.host, mq.port, username=NOC, password=NOC_PW) as c:
                await c.subscribe(f"{BASE}/status", qos=1)
                await read_until(c, lambda m: status(m) == "offline", 10)
        finally:
            agent.stop()
    assert AGENT_PW not in "".join(agent.raw)
