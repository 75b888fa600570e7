"""The operator's side over MQTT: sign and send a command and wait for its results,
make a key pair, and the fleet view from retained state.

Runs in the CLI, never in the daemon. The broker is a URL, mqtt://host[:port] or
mqtts://host[:port] (TLS, verified against --ca-file or the system's CAs); the
password comes from a file, never from the command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiomqtt

from trunkguard.bus.mqtt import valid_filter
from trunkguard.commands import CommandError
from trunkguard.signing import Body, keypair, new_id, private_key, sign

LIFETIME_MS = 30_000  # a command is valid this long after it is signed
T = TypeVar("T")


@dataclass(frozen=True)
class BrokerOpts:
    url: str
    ca_file: str | None = None
    username: str | None = None
    password_file: str | None = None
    prefix: str = "trunkguard"

    def client(self) -> aiomqtt.Client:
        u = urlsplit(self.url)
        password = None
        if self.password_file:
            password = Path(self.password_file).read_text().strip()
        v5 = aiomqtt.ProtocolVersion.V5
        if u.scheme == "unix" and u.path:  # on the broker's host: unix:///run/mosquitto.sock
            return aiomqtt.Client(
                u.path,
                username=self.username,
                password=password,
                protocol=v5,
                transport="unix",
                timeout=5,
            )
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            forms = "mqtt://HOST[:PORT], mqtts://HOST[:PORT] or unix:///PATH"
            raise ValueError(f"broker must be {forms}: {self.url}")
        tls = u.scheme == "mqtts"
        ctx = ssl.create_default_context(cafile=self.ca_file) if tls else None
        return aiomqtt.Client(
            u.hostname,
            u.port or (8883 if tls else 1883),
            username=self.username,
            password=password,
            protocol=v5,
            tls_context=ctx,
            timeout=5,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a broker conversation; a broker failure is one line (CommandError)."""
    try:
        return asyncio.run(coro)
    except aiomqtt.MqttError as e:
        raise CommandError(f"broker: {e}") from None


def keygen(out: str) -> tuple[Path, Path, str]:
    """Write OUT.key (private, 0600) and OUT.pub (base64); refuses to overwrite."""
    base = Path(out)
    key, pub = base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")
    pem, public = keypair()
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub.write_text(public + "\n")
    return key, pub, public


def _counter(key_file: Path) -> int:
    """Above any counter this key signed before: microseconds, and never repeated."""
    state = key_file.with_name(key_file.name + ".counter")
    try:
        last = int(state.read_text().strip())
    except (OSError, ValueError):
        last = 0
    counter = max(last + 1, time.time_ns() // 1000)
    state.write_text(f"{counter}\n")
    return counter


def signed(
    key_file: str,
    key_id: str | None,
    site: str,
    node: str | None,
    action: str,
    args: Mapping[str, str | bool],
) -> tuple[str, bytes]:
    """The command id and the signed payload."""
    path = Path(key_file)
    key = private_key(path.read_bytes())
    now = time.time_ns() // 1_000_000
    body = Body(
        aud=site if node is None else f"{site}/{node}",
        id=new_id(),
        action=action,
        args=dict(args),
        issued_at=now,
        expires_at=now + LIFETIME_MS,
        key_id=key_id or path.name.removesuffix(".key"),
        counter=_counter(path),
    )
    return body.id, sign(key, body)


async def send(
    b: BrokerOpts,
    cid: str,
    payload: bytes,
    site: str,
    node: str | None,
    timeout: float,
    drill_timeout: float = 0.0,
) -> dict[str, dict[str, Any]]:
    """Publish a signed command and collect the answers by node: from `node`, or from
    every node of the site that is online (its retained status). With drill_timeout,
    also wait that long for each started drill's report (added as "report")."""
    for level in (site, node or "x"):
        if not valid_filter(level) or "+" in level or "#" in level or "/" in level:
            raise ValueError(f"bad site or node name {level!r}")
    base = f"{b.prefix}/{site}"
    topic = f"{base}/cmd" if node is None else f"{base}/{node}/cmd"
    answers: dict[str, dict[str, Any]] = {}
    expected: set[str] = set() if node is None else {node}
    drills: dict[str, str] = {}  # node -> the id of the drill it started
    async with b.client() as c:
        await c.subscribe(f"{base}/+/cmd/result", qos=1)
        if drill_timeout:
            await c.subscribe(f"{base}/+/drills/+", qos=1)
        if node is None:
            await c.subscribe(f"{base}/+/status", qos=1)
            expected = await _online(c, 0.5)
        await c.publish(topic, payload, qos=1)
        try:
            async with asyncio.timeout(max(timeout, drill_timeout)):
                async for m in c.messages:
                    doc, t = json_doc(m.payload), str(m.topic)
                    if t.endswith("/cmd/result") and doc.get("id") == cid:
                        who = str(doc.get("node"))
                        answers[who] = doc
                        started = doc.get("result")
                        if drill_timeout and doc.get("ok") and isinstance(started, dict):
                            drills[who] = str(started.get("drill"))
                    elif "/drills/" in t and drills.get(who := t.split("/")[-3]) == doc.get("id"):
                        del drills[who]
                        answers[who]["report"] = doc
                    if expected and expected <= set(answers) and not drills:
                        break
        except TimeoutError:
            pass
    for missing in sorted(expected - set(answers)):
        answers[missing] = {"ok": False, "reason": "timeout", "error": "no answer in time"}
    return answers


async def _online(c: aiomqtt.Client, within: float) -> set[str]:
    nodes: set[str] = set()
    try:
        async with asyncio.timeout(within):
            async for m in c.messages:
                if (
                    str(m.topic).endswith("/status")
                    and json_doc(m.payload).get("status") == "online"
                ):
                    nodes.add(str(m.topic).split("/")[-2])
    except TimeoutError:
        pass
    return nodes


def json_doc(payload: Any) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (TypeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


# ---- the fleet ---------------------------------------------------------------------


@dataclass
class Node:
    site: str
    node: str
    status: dict[str, Any] = field(default_factory=dict)
    heartbeat: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    alarms: dict[str, Any] = field(default_factory=dict)  # the retained `alarms` topic

    def view(self, now: float) -> dict[str, Any]:
        """What the fleet view shows of one node; stale data is said to be stale."""
        st, hb, state = self.status, self.heartbeat, self.state
        online = st.get("status") == "online"
        fresh = bool(hb) and (not st or hb.get("epoch") == st.get("epoch"))
        age = _age(state.get("published_at"), now)
        if online and fresh:
            health = "up"
        elif not online and st:
            health = "offline"
        else:
            health = "stale"  # no live heartbeat: what is shown may be long gone
        targets = state.get("targets") or {}
        trunks = {k: v.get("state") for k, v in targets.items() if k.startswith("trunk:")}
        return {
            "site": self.site,
            "node": self.node,
            "health": health,
            "status": st.get("status"),
            "epoch": st.get("epoch"),
            "heartbeat": "fresh" if fresh else "missing",
            "data_age_s": None if age is None else round(age, 1),
            "site_state": (state.get("evacuation") or {}).get("state"),
            "trunks": trunks,
            "links": {k: v.get("state") for k, v in (state.get("links") or {}).items()},
            "sensors": {k: v.get("state") for k, v in (state.get("sensors") or {}).items()},
            "routes": {k: v.get("active") for k, v in (state.get("routes") or {}).items()},
            "peers": {k: v.get("state") for k, v in (state.get("peers") or {}).items()},
            "takeovers": {k: v.get("state") for k, v in (state.get("takeovers") or {}).items()},
            "alarms": [str(a) for a in (self.alarms.get("alarms") or [])][:50],
        }


def _age(iso: Any, now: float) -> float | None:
    """Seconds since an ISO 8601 UTC time a document carries (its publication)."""
    if not isinstance(iso, str):
        return None
    try:
        return max(0.0, now - datetime.fromisoformat(iso).timestamp())
    except ValueError:
        return None


async def fleet(
    b: BrokerOpts, site: str | None, quiet: float = 0.5, most: float = 5.0
) -> list[dict[str, Any]]:
    """Every node's retained status, heartbeat and state: read until no retained message
    came for `quiet` seconds (live heartbeats keep coming), or `most` seconds."""
    nodes: dict[tuple[str, str], Node] = {}
    where = site or "+"
    loop = asyncio.get_running_loop()
    async with b.client() as c:
        for what in ("status", "heartbeat", "state", "alarms"):
            await c.subscribe(f"{b.prefix}/{where}/+/{what}", qos=1)
        end, last = loop.time() + most, loop.time()
        while (now := loop.time()) < end and now - last < quiet:
            try:
                async with asyncio.timeout(min(end, last + quiet) - now):
                    m = await anext(c.messages)
            except TimeoutError:
                break
            if m.retain:
                last = loop.time()
            levels = str(m.topic).split("/")
            n = nodes.setdefault((levels[-3], levels[-2]), Node(levels[-3], levels[-2]))
            setattr(n, levels[-1], json_doc(m.payload))
    now_wall = time.time()
    return [n.view(now_wall) for _, n in sorted(nodes.items())]


def print_fleet(rows: list[dict[str, Any]]) -> None:
    print(f"{'SITE/NODE':<24} {'HEALTH':<8} {'DATA AGE':>9}  {'TRUNKS UP':<10} ROUTES / PEERS")
    for r in rows:
        age = "-" if r["data_age_s"] is None else f"{r['data_age_s']:.1f}s"
        up = sum(1 for s in r["trunks"].values() if s == "up")
        trunks = f"{up}/{len(r['trunks'])}"
        routes = " ".join(f"{g}={p or '-'}" for g, p in r["routes"].items())
        peers = " ".join(f"{p}:{s}" for p, s in r["peers"].items())
        taken = " ".join(f"took-over:{p}" for p, s in r["takeovers"].items() if s == "active")
        health = r["health"].upper() if r["health"] != "up" else "up"
        extra = " ".join(x for x in (peers, taken) if x)
        name = f"{r['site']}/{r['node']}"
        print(f"{name:<24} {health:<8} {age:>9}  {trunks:<10} {routes} {extra}".rstrip())
        for a in r["alarms"]:
            print(f"{'':<24} ALARM: {a}")
