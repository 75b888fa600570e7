"""Site evacuation through the whole agent: room sensors and a chiller published on a
real mosquitto as a BMS would, the projection moving calls to the remote site before
the room is critical, the return after `hold`, the operator's forced evacuation, a
silent sensor turning stale, and a garbage payload that is reported and survived.

Real time, compressed: the room climbs 1 °C a second with a 6 s window (the chiller
scenario at 60x; the 2 °C/min version with a controlled clock is in
tests/unit/test_chiller_scenario.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiomqtt
import pytest

from tests.lib import procs, sipp
from tests.lib.agentproc import Agent, Event, cli
from tests.lib.mosquitto import Broker, broker

pytestmark = pytest.mark.integration

AGENT_USER, AGENT_PW = "tg-dc1", "agent-Secret-42"
BMS, BMS_PW = "bms", "bms-pw"
BASE = "trunkguard/dc1/sbc1"
WARN, CRITICAL = 27.0, 32.0


def config(tmp: Path, mq: Broker, port_local: int, port_dr: int) -> Path:
    (tmp / "mqtt.pass").write_text(AGENT_PW + "\n")
    cfg = tmp / "trunkguard.yaml"
    cfg.write_text(f"""\
site: dc1
node: sbc1
control: {{socket: {tmp}/control.sock}}
metrics: null
probe: {{interval: 1s, fast_interval: 200ms, timeout: 500ms, rise: 2, fall: 2}}
trunks:
  local: {{uri: "sip:127.0.0.1:{port_local}"}}
  dr-sbc: {{uri: "sip:127.0.0.1:{port_dr}"}}
sensors:
  room-a:
    mqtt: {{topic: bms/dc1/room-a, field: data.temp}}
    unit: "C"
    warn: {WARN}
    critical: {CRITICAL}
    window: 6s
    stale_after: 30s
  room-b:
    mqtt: {{topic: bms/dc1/room-b}}
    warn: {WARN}
    critical: {CRITICAL}
    stale_after: 2s
  chiller:
    kind: bool
    mqtt: {{topic: bms/dc1/chiller}}
    critical_when: false
    stale_after: 30s
evacuation:
  hold: 2s
  return: auto
  when:
    any_of:
      - {{sensors: [room-a], is: critical}}
      - {{sensors: [room-a], critical_within: 10s}}
routes:
  pstn:
    hold: 1m
    paths:
      - {{name: local, requires: [trunk:local]}}
      - {{name: dr-site, requires: [trunk:dr-sbc], remote: true}}
mqtt:
  host: {mq.host}
  port: {mq.port}
  username: {AGENT_USER}
  password_file: {tmp}/mqtt.pass
  keepalive: 1s
""")
    return cfg


def route(kind: str, path: str) -> object:
    return lambda e: (
        e.get("event") == "route change" and e.get("kind") == kind and e.get("new") == path
    )


def site(new: str) -> object:
    return lambda e: e.get("event") == "site" and e.get("new") == new


async def test_projected_heat_evacuates_early_and_returns_after_hold(tmp_path: Path) -> None:
    port_local, port_dr = procs.free_port(), procs.free_port()
    with (
        broker(tmp_path, users={AGENT_USER: AGENT_PW, BMS: BMS_PW}) as mq,
        sipp.options_responder(tmp_path, "127.0.0.1", port_local),
        sipp.options_responder(tmp_path, "127.0.0.1", port_dr),
    ):
        agent = Agent(config(tmp_path, mq, port_local, port_dr))
        wait = agent.wait_for
        sock = str(tmp_path / "control.sock")
        try:
            await asyncio.to_thread(wait, agent.applied("local"), 15, "initial route")
            # room-b never reports: it turns stale, an alarm of its own, with the reason.
            stale = await asyncio.to_thread(
                wait,
                lambda e: (
                    e.get("event") == "sensor"
                    and e.get("sensor") == "room-b"
                    and e.get("new") == "stale"
                ),
                10,
                "room-b stale",
            )
            assert "no reading in 2s since start" in stale["reason"]

            async with aiomqtt.Client(mq.host, mq.port, username=BMS, password=BMS_PW) as bms:
                # Garbage from the BMS is reported once and survived.
                mark = agent.mark()
                await bms.publish("bms/dc1/room-a", b"hot!", qos=1)
                err = await asyncio.to_thread(
                    wait,
                    lambda e: e.get("event") == "sensor read failed",
                    10,
                    "bad payload reported",
                    mark,
                )
                assert err["sensor"] == "room-a" and "bms/dc1/room-a" in err["error"]
                # Refused before parsing: an oversized payload; and a reading no room can
                # have (a forged 10^28 C) is a read error, never critical.
                hostile = (
                    (b"9" * 5000, "payload of 5000 bytes (max_payload 4096)"),
                    (json.dumps({"data": {"temp": 1e28}}).encode(), "implausible reading"),
                )
                for payload, want in hostile:
                    mark = agent.mark()
                    await bms.publish("bms/dc1/room-a", payload, qos=1)
                    err = await asyncio.to_thread(
                        wait,
                        lambda e: e.get("event") == "sensor read failed",
                        10,
                        want,
                        mark,
                    )
                    assert want in err["error"], err
                # A flood of the same garbage: still one report, and the agent keeps up.
                mark = agent.mark()
                for _ in range(2000):
                    await bms.publish("bms/dc1/room-a", b"hot!", qos=0)
                await bms.publish("bms/dc1/room-a", b'{"data": {}}', qos=1)  # another error
                await asyncio.to_thread(
                    wait,
                    lambda e: e.get("event") == "sensor read failed" and "JSON" not in e["error"],
                    15,
                    "the flood read",
                    mark,
                )
                agent.drain()
                reports = [e for e in agent.events[mark:] if e.get("event") == "sensor read failed"]
                assert len(reports) == 2, reports  # the garbage once, then the other error
                assert not [e for e in agent.events if site("evacuating")(e)]  # type: ignore[operator]

                # The chiller stops; room A climbs 1 °C/s from 22 °C (sampled every 200 ms).
                await bms.publish("bms/dc1/chiller", b"false", qos=1)
                mark = agent.mark()
                start = time.monotonic()
                temp = 22.0
                evac: Event | None = None
                while temp < CRITICAL:
                    payload = json.dumps({"data": {"temp": round(temp, 2)}}).encode()
                    await bms.publish("bms/dc1/room-a", payload, qos=1)
                    agent.drain()
                    hit = [e for e in agent.events[mark:] if site("evacuating")(e)]  # type: ignore[operator]
                    if hit:
                        evac = hit[0]
                        break
                    await asyncio.sleep(0.2)  # the sensor's sampling period, not a sync
                    temp = 22.0 + (time.monotonic() - start)
                assert evac is not None, "no evacuation before the room reached critical"
                lead = (CRITICAL - temp) / 1.0  # seconds left at 1 °C/s
                print(f"\nevacuated at {temp:.1f} C, {lead:.1f}s before critical: {evac['reason']}")
                assert lead >= 3.0
                assert "room-a" in evac["reason"] and "critical in" in evac["reason"]
                await asyncio.to_thread(wait, route("evacuate", "dr-site"), 5, "evacuate", mark)
                await asyncio.to_thread(wait, agent.applied("dr-site"), 5, "dr-site", mark)

                # Peers see a retained evacuating state with the reason. The first look may
                # catch it live (published while we subscribed); a later one is retained.
                for must_retain in (False, True):
                    async with aiomqtt.Client(mq.host, mq.port, username=BMS, password=BMS_PW) as c:
                        await c.subscribe(f"{BASE}/site", qos=1)
                        async with asyncio.timeout(5):
                            async for msg in c.messages:
                                state = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                                if state["state"] == "evacuating":
                                    break
                    assert msg.retain or not must_retain
                    assert "room-a" in state["reason"]

                # The operator cannot end it while the rule holds: one line, exit 1.
                res = cli("maintenance", "site", "off", "--socket", sock)
                assert res.returncode == 1 and "rule still holds" in res.stderr
                assert res.stderr.count("\n") == 1

                # Cooling is back: readings flat at 20 °C clear the rule; return after hold.
                mark = agent.mark()
                for _ in range(40):
                    payload = json.dumps({"data": {"temp": 20.0}}).encode()
                    await bms.publish("bms/dc1/room-a", payload, qos=1)
                    agent.drain()
                    if any(site("normal")(e) for e in agent.events[mark:]):  # type: ignore[operator]
                        break
                    await asyncio.sleep(0.2)
                back = await asyncio.to_thread(wait, site("normal"), 5, "site normal", mark)
                assert "clear for 2s" in back["reason"]
                await asyncio.to_thread(wait, route("return", "local"), 5, "return", mark)
                await asyncio.to_thread(wait, agent.applied("local"), 5, "local again", mark)

            # Fire in the building: the operator forces evacuation, and ends it.
            mark = agent.mark()
            res = cli("maintenance", "site", "on", "--socket", sock)
            assert res.returncode == 0, res.stderr
            forced = await asyncio.to_thread(wait, site("evacuating"), 5, "forced", mark)
            assert forced["forced"] is True and forced["reason"] == "forced by operator"
            await asyncio.to_thread(wait, agent.applied("dr-site"), 5, "dr-site (forced)", mark)
            st = json.loads(cli("status", "--json", "--socket", sock).stdout)
            assert st["evacuation"]["state"] == "evacuating" and st["evacuation"]["forced"]
            assert st["routes"]["pstn"]["evacuated"] is True
            assert st["sensors"]["room-b"]["state"] == "stale"
            assert st["sensors"]["chiller"]["state"] == "critical"
            table = cli("status", "--socket", sock)
            assert table.returncode == 0, table.stderr
            assert "SITE EVACUATING (forced): forced by operator" in table.stdout
            assert "room-b" in table.stdout and "stale" in table.stdout
            assert "dr-site" in table.stdout and "(remote)" in table.stdout
            mark = agent.mark()
            res = cli("maintenance", "site", "off", "--socket", sock)
            assert res.returncode == 0, res.stderr
            await asyncio.to_thread(wait, route("return", "local"), 5, "return (operator)", mark)
        finally:
            assert agent.stop() == 0
    assert AGENT_PW not in "".join(agent.raw)
