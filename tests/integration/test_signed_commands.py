"""Signed commands over real bridged brokers: the NOC at the hub (TLS, password, the
shipped ACL) steers one site and only that one, and nothing else gets through: replays,
expired, re-signed, altered, misaddressed, retained or unauthorised commands are
refused with their reason and change nothing; counters survive a restart; a flood of
garbage is counted and survived. And the fleet view, with a site whose agent froze."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.lib.agentproc import Agent
from tests.lib.sites import TLS_PORT, Sites, sites
from trunkguard.noc import keygen
from trunkguard.signing import Body, new_id, private_key, sign

pytestmark = pytest.mark.integration

A, B, C = "site-a", "site-b", "site-c"
NODE = "sbc1"
NUMBERS = "203.0.113.0/24"


@dataclass
class Lab:
    lab: Sites
    tmp: Path
    agents: dict[str, Agent]
    keys: Path  # directory with noc.key/.pub, ro.key/.pub, evil.key

    def config(self, site: str, keys: dict[str, str], metrics: str = "null") -> Path:
        s = self.lab[site]
        d = self.tmp / site
        d.mkdir(parents=True, exist_ok=True)
        (d / "mqtt.pass").write_text(s.agent_password + "\n")
        key_lines = "".join(
            f"    {k}: {{public_key_file: {self.keys / k}.pub, allow: [{rights}]}}\n"
            for k, rights in keys.items()
        )
        path = d / "trunkguard.yaml"
        path.write_text(f"""\
site: {site}
node: {NODE}
state_dir: {d}/state
control: {{socket: {d}/control.sock}}
metrics: {metrics}
routes:
  pstn:
    failback: manual
    paths:
      - name: primary
        actions: {{netlink: [{{dst: {NUMBERS}, gateway: {s.hub_address}}}]}}
      - name: backup
        actions: {{netlink: [{{dst: {NUMBERS}, dev: lo}}]}}
commands:
  keys:
{key_lines}mqtt:
  host: {s.address}
  port: {s.port}
  username: {s.agent_user}
  password_file: {d}/mqtt.pass
  keepalive: 2s
  heartbeat: 500ms
""")
        return path

    def start(self, site: str, first: bool = True) -> Agent:
        agent = Agent(self.tmp / site / "trunkguard.yaml", netns=self.lab[site].ns.name)
        self.agents[site] = agent
        if first:
            agent.wait_for(Agent.applied("primary"), 20, f"{site} primary")
        topic = f"trunkguard/{site}/{NODE}/cmd"
        agent.wait_for(
            lambda e: e.get("event") == "mqtt subscribed" and e.get("topic") == topic,
            20,
            "listening for commands",
        )
        return agent

    def route(self, site: str) -> str:
        return self.lab[site].ns.ip("route", "show", NUMBERS).stdout.strip()

    def cli(self, *args: str, key: str = "noc") -> subprocess.CompletedProcess[str]:
        """The operator's CLI at the NOC: in the hub's namespace, MQTT over TLS."""
        tls = self.lab.hub.tls
        assert tls is not None
        argv = [
            *self.lab.hub.ns.exec_argv(sys.executable, "-m", "trunkguard", *args),
            "--broker",
            f"mqtts://10.77.1.1:{TLS_PORT}",
            "--ca-file",
            str(tls.ca_file),
            "--username",
            "noc",
            "--password-file",
            str(self.tmp / "noc.pass"),
        ]
        if key:
            argv += ["--key", str(self.keys / f"{key}.key")]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@contextmanager
def command_lab(tmp: Path, names: tuple[str, ...] = (A, B)) -> Iterator[Lab]:
    keys = tmp / "keys"
    keys.mkdir(parents=True)
    for k in ("noc", "ro", "evil"):
        keygen(str(keys / k))
    with sites(tmp / "mq", names, tls=True) as lab, ExitStack() as stack:
        (tmp / "noc.pass").write_text(lab.noc_password + "\n")
        pl = Lab(lab, tmp, {}, keys)
        stack.callback(lambda: [a.stop() for a in pl.agents.values()])
        yield pl


def body(site: str = A, **kw: Any) -> Body:
    now = time.time_ns() // 1_000_000
    base: dict[str, Any] = dict(
        aud=f"{site}/{NODE}",
        id=new_id(),
        action="failover",
        args={"group": "pstn", "path": "primary"},
        issued_at=now,
        expires_at=now + 20_000,
        key_id="noc",
        counter=time.time_ns() // 1000,
    )
    return Body(**{**base, **kw})


async def send_raw(
    lab: Sites, payloads: list[tuple[bytes, bool]], site: str = A, want: int | None = None
) -> list[dict[str, Any]]:
    """Publish at the hub as the NOC; collect the answers on the site's cmd/result."""
    answers: list[dict[str, Any]] = []
    want = len(payloads) if want is None else want
    async with lab.client("hub") as noc:
        await noc.subscribe(f"trunkguard/{site}/{NODE}/cmd/result", qos=1)
        for payload, retain in payloads:
            await noc.publish(f"trunkguard/{site}/{NODE}/cmd", payload, qos=1, retain=retain)
        if want:
            async with asyncio.timeout(15):
                async for m in noc.messages:
                    answers.append(json.loads(m.payload))  # type: ignore[arg-type]
                    if len(answers) >= want:
                        break
    return answers


def test_signed_commands_reach_one_site_and_nothing_forged_gets_through(tmp_path: Path) -> None:
    with command_lab(tmp_path) as pl:
        rights = {"noc": "read, maintenance, routing", "ro": "read"}
        for s in (A, B):
            pl.config(s, rights)
            pl.start(s)
        a = pl.agents[A]
        assert "via" in pl.route(A) and "via" in pl.route(B)

        # The signed failover from the CLI: site A moves, site B does not.
        out = pl.cli("failover", "pstn", "backup", "--site", A, "--node", NODE)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip() == f"{A}/{NODE}: ok; routes now: pstn=backup"
        a.wait_for(Agent.applied("backup"), 10, "backup applied")
        assert "dev lo" in pl.route(A) and "via" in pl.route(B)
        st = pl.cli("status", "--site", A, "--node", NODE, "--json", key="ro")
        assert json.loads(st.stdout)[NODE]["result"]["routes"]["pstn"]["active"] == "backup"

        # A key without routing rights is refused by the agent, with its reason.
        out = pl.cli("failback", "pstn", "--site", A, "--node", NODE, key="ro")
        assert out.returncode == 1
        assert "refused (forbidden): key ro may not use routing" in out.stdout

        # Crafted at the NOC: every one refused, with its reason, and nothing moves.
        noc = private_key((pl.keys / "noc.key").read_bytes())
        evil = private_key((pl.keys / "evil.key").read_bytes())
        good = sign(noc, body())
        flipped = bytearray(good)
        flipped[good.index(b'"primary"') + 2] ^= 0x20  # "primary" -> "pRimary"
        now = time.time_ns() // 1_000_000
        cases = [
            (sign(noc, body(issued_at=now - 40_000, expires_at=now - 20_000)), False, "expired"),
            (sign(evil, body()), False, "bad_signature"),  # another key, claiming "noc"
            (bytes(flipped), False, "bad_signature"),
            (sign(noc, body(aud=f"{B}/{NODE}")), False, "wrong_audience"),
            (sign(noc, body()), True, "retained"),
            (sign(noc, body(key_id="ro")), False, "bad_signature"),
            (
                sign(private_key((pl.keys / "ro.key").read_bytes()), body(key_id="ro")),
                False,
                "forbidden",
            ),
            (b"\x00garbage", False, None),  # no id: counted, not answered
        ]
        answers = asyncio.run(send_raw(pl.lab, [(p, r) for p, r, _ in cases], want=7))
        got = [x["reason"] for x in answers]
        assert got == [w for _, _, w in cases if w], got
        assert all(x["ok"] is False and x["error"] for x in answers)
        # The same command twice: the replay is refused.
        once = sign(noc, body(args={"group": "pstn", "path": "backup"}))
        first, again = asyncio.run(send_raw(pl.lab, [(once, False), (once, False)]))
        assert first["ok"] is True and again["reason"] == "replayed"
        assert "dev lo" in pl.route(A)  # nothing of the above moved it back to primary
        changes = [e for e in a.events if e.get("event") == "route change"]
        assert [c["new"] for c in changes] == ["primary", "backup"]

        # MQTT 5 request/response: the answer also goes to the Response Topic with the
        # Correlation Data (under the agent's own prefix, as the ACL allows).
        async def request() -> tuple[dict[str, Any], bytes]:
            reply_to = f"trunkguard/{A}/{NODE}/cmd/result/noc-1"
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = reply_to
            props.CorrelationData = b"ticket-42"
            async with pl.lab.client("hub") as c:
                await c.subscribe(reply_to, qos=1)
                payload = sign(noc, body(action="status", args={}))
                await c.publish(f"trunkguard/{A}/{NODE}/cmd", payload, qos=1, properties=props)
                async with asyncio.timeout(10):
                    m = await anext(c.messages)
            return json.loads(m.payload), m.properties.CorrelationData  # type: ignore[arg-type,union-attr]

        doc, corr = asyncio.run(request())
        assert doc["ok"] is True and corr == b"ticket-42"

        # Counters survive a restart: a command signed before it, never used, is refused.
        stale = sign(noc, body(counter=1))
        a.stop()
        pl.start(A, first=False)  # routing restored from state_dir: nothing to apply
        [ans] = asyncio.run(send_raw(pl.lab, [(stale, False)]))
        assert ans["reason"] == "counter" and "not above" in ans["error"]


def test_a_flood_of_garbage_on_cmd_is_counted_and_survived(tmp_path: Path) -> None:
    with command_lab(tmp_path, (A,)) as pl:
        pl.config(A, {"noc": "routing, read"}, metrics='{listen: "127.0.0.1:9464"}')
        a = pl.start(A)
        pid = a.proc.pid

        def rss_kb() -> int:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
            raise AssertionError("no VmRSS")

        noc = private_key((pl.keys / "noc.key").read_bytes())
        rng = random.Random(7)
        kinds = [
            lambda: os.urandom(rng.randrange(0, 300)),
            lambda: b"{" * rng.randrange(1, 5000),  # deep or oversized
            lambda: b"9" * 5000,  # over max_payload
            lambda: json.dumps({"v": 1, "body": {"id": "x" * rng.randrange(1, 80)}}).encode(),
            lambda: sign(noc, body(counter=rng.randrange(0, 10))),  # stale counters
            lambda: sign(noc, body(action="reboot", args={})),
        ]
        payloads = [(kinds[i % len(kinds)](), False) for i in range(10_000)]

        def total() -> float:
            code = (
                "import urllib.request;print(sum(float(l.split()[-1]) for l in urllib.request."
                "urlopen('http://127.0.0.1:9464/metrics',timeout=5).read().decode().splitlines()"
                " if l.startswith('trunkguard_commands_total{')))"
            )
            out = pl.lab[A].ns.sh(sys.executable, "-c", code)
            return float(out.stdout)

        def flood() -> None:
            """In bursts of 800: mosquitto holds at most 1,000 QoS 1 messages for a slow
            subscriber (max_queued_messages) and drops the rest at the broker; below
            that, every message must reach the agent and be counted."""
            for start in range(0, len(payloads), 800):
                chunk = payloads[start : start + 800]
                asyncio.run(send_raw(pl.lab, chunk, want=0))
                deadline = time.monotonic() + 60
                while total() < start + len(chunk):  # the agent drains its queue
                    assert time.monotonic() < deadline, total()
                    time.sleep(0.1)
            assert total() == len(payloads)

        # Memory stays bounded by the receive queues (the broker's 1,000 per client and
        # the agent's 10,000 messages): the flood adds no more than that can hold.
        before = rss_kb()
        flood()
        after = rss_kb()
        assert after - before < 64_000, (before, after)
        assert a.proc.poll() is None
        # Still answering: a genuine command goes through after the flood.
        out = pl.cli("failover", "pstn", "backup", "--site", A, "--node", NODE)
        assert out.returncode == 0, out.stdout + out.stderr


def test_fleet_shows_every_site_and_a_frozen_one_as_stale(tmp_path: Path) -> None:
    with command_lab(tmp_path, (A, B, C)) as pl:
        for s in (A, B, C):
            pl.config(s, {"noc": "read"})
            pl.start(s)
        out = pl.cli("fleet", "--json", key="")
        rows = {r["site"]: r for r in json.loads(out.stdout)}
        assert set(rows) == {A, B, C}
        assert all(
            r["health"] == "up" and r["routes"] == {"pstn": "primary"} for r in rows.values()
        )
        pl.agents[C].signal(signal.SIGSTOP)  # frozen: its status still says online
        try:
            deadline = time.monotonic() + 20
            while True:
                rows = {r["site"]: r for r in json.loads(pl.cli("fleet", "--json", key="").stdout)}
                if rows[C]["health"] != "up":
                    break
                assert time.monotonic() < deadline, rows[C]
                time.sleep(0.5)
            assert rows[C]["health"] in ("stale", "offline") and rows[C]["heartbeat"] == "missing"
            assert rows[A]["health"] == rows[B]["health"] == "up"
            table = pl.cli("fleet", key="").stdout
            line = next(x for x in table.splitlines() if x.startswith(f"{C}/"))
            assert "STALE" in line or "OFFLINE" in line
            assert rows[C]["data_age_s"] is not None
        finally:
            pl.agents[C].signal(signal.SIGCONT)
