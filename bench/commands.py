"""Benchmark: a signed command's round trip through the broker, and what verifying costs.

One mosquitto (passwords, the shipped ACL) and one agent in a network namespace, the
broker on the namespace's loopback; the operator's side runs here and reaches the
broker over its unix socket, with the same code the CLI uses (trunkguard.noc). Each
command is a signed failover that alternates between two paths: sign, publish, the
agent verifies and runs it, its answer comes back on cmd/result; `ip monitor route`
in the namespace sees the kernel route change independently. The verification cost is
measured in the same run: signing.verify() over signed commands, and the agent's whole
check (verify, replay, counter, rights) through its Inbox.

    sudo .venv/bin/python bench/commands.py [--commands 100]

Prints a table and writes bench/results/commands.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, pct, write_result  # noqa: E402
from tests.lib.agentproc import Agent  # noqa: E402
from tests.lib.ipmonitor import IpMonitor  # noqa: E402
from tests.lib.mosquitto import broker  # noqa: E402
from tests.lib.netns import namespaces, veth  # noqa: E402
from trunkguard import noc  # noqa: E402
from trunkguard.signing import public_key, verify  # noqa: E402

NUMBERS = "203.0.113.0/24"
NODELAY = "set_tcp_nodelay true"  # as configs/mosquitto/ ships it
SITE, NODE = "site-a", "sbc1"


def classify(line: str) -> str | None:
    if not line.startswith(NUMBERS):
        return None
    return "backup" if " dev lo" in line else "primary" if " via " in line else None


def verify_cost(key: Path, pub: str, n: int = 2000) -> float:
    """Microseconds per signing.verify() of a genuine command."""
    keys = {"noc": public_key(pub)}
    payloads = [
        noc.signed(str(key), "noc", SITE, NODE, "failover", {"group": "pstn", "path": "backup"})[1]
        for _ in range(n)
    ]
    now = time.time_ns() // 1_000_000
    t0 = time.perf_counter()
    for p in payloads:
        verify(p, keys, (f"{SITE}/{NODE}", SITE), now, 5000)
    return (time.perf_counter() - t0) / n * 1e6


async def held_connection(opts: noc.BrokerOpts, key: Path, n: int) -> list[float]:
    """Publish -> answer on one open connection (the agent and the broker alone)."""
    out: list[float] = []
    base = f"trunkguard/{SITE}/{NODE}"
    async with opts.client() as c:
        await c.subscribe(f"{base}/cmd/result", qos=1)
        for i in range(n + 1):  # ends where it started, on primary
            path = "primary" if i % 2 == 0 else "backup"
            args = {"group": "pstn", "path": path}
            cid, payload = noc.signed(str(key), "noc", SITE, NODE, "failover", args)
            t0 = time.monotonic()
            await c.publish(f"{base}/cmd", payload, qos=1)
            async for m in c.messages:
                if noc.json_doc(m.payload).get("id") == cid:
                    break
            if i:
                out.append(time.monotonic() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commands", type=int, default=100)
    args = ap.parse_args()
    rtt: list[float] = []
    route: list[float] = []
    with tempfile.TemporaryDirectory() as d, namespaces("cmd", "gw") as (ns, gw):
        tmp = Path(d)
        key, _pub, public = noc.keygen(str(tmp / "noc"))
        sock = tmp / "mq.sock"
        acl = (ROOT / "configs/mosquitto/acl-site.conf").read_text().replace("site-a", SITE)
        veth(ns, "10.99.0.1/24", gw, "10.99.0.2/24")  # the primary path's next hop
        users = {SITE: "agent-pw", "noc": "noc-pw"}
        with broker(
            tmp, users=users, acl=acl, extra_conf=f"{NODELAY}\nlistener 0 {sock}", netns=ns.name
        ) as mq:
            (tmp / "agent.pass").write_text("agent-pw\n")
            (tmp / "noc.pass").write_text("noc-pw\n")
            cfg = tmp / "trunkguard.yaml"
            cfg.write_text(f"""\
site: {SITE}
node: {NODE}
state_dir: {tmp}/state
control: {{socket: {tmp}/control.sock}}
metrics: null
routes:
  pstn:
    failback: manual
    paths:
      - name: primary
        actions: {{netlink: [{{dst: {NUMBERS}, gateway: 10.99.0.2}}]}}
      - name: backup
        actions: {{netlink: [{{dst: {NUMBERS}, dev: lo}}]}}
commands:
  keys:
    noc: {{public_key: {public}, allow: [routing, read]}}
mqtt: {{host: 127.0.0.1, port: {mq.port}, username: {SITE}, password_file: {tmp}/agent.pass}}
""")
            agent = Agent(cfg, netns=ns.name)
            watch = IpMonitor(ns.name, ["route"], classify)
            opts = noc.BrokerOpts(
                f"unix://{sock}", username="noc", password_file=str(tmp / "noc.pass")
            )
            try:
                agent.wait_for(Agent.applied("primary"), 20, "primary")
                topic = f"trunkguard/{SITE}/{NODE}/cmd"
                agent.wait_for(
                    lambda e: e.get("event") == "mqtt subscribed" and e.get("topic") == topic,
                    20,
                    "subscribed",
                )
                held = asyncio.run(held_connection(opts, key, args.commands))
                for i in range(args.commands + 1):
                    path = "backup" if i % 2 == 0 else "primary"
                    args_ = {"group": "pstn", "path": path}
                    cid, payload = noc.signed(str(key), "noc", SITE, NODE, "failover", args_)
                    t0 = time.monotonic()
                    answers = asyncio.run(noc.send(opts, cid, payload, SITE, NODE, 10))
                    t1 = time.monotonic()
                    assert answers[NODE]["ok"], answers
                    t_route = watch.wait(path, t0, 10)
                    if i == 0:
                        continue  # warm-up (imports, first connection)
                    rtt.append(t1 - t0)
                    route.append(t_route - t0)
            finally:
                agent.stop()
                watch.close()
        cost = verify_cost(key, public)
    # send: noc.send() connects, subscribes, publishes, waits: the CLI's whole conversation
    # (without starting Python); held: one open connection, the agent and broker alone.
    rows = {
        "held_publish_to_result_s": {"p50": pct(held, 50), "p95": pct(held, 95), "max": max(held)},
        "send_to_result_s": {"p50": pct(rtt, 50), "p95": pct(rtt, 95), "max": max(rtt)},
        "send_to_route_s": {"p50": pct(route, 50), "p95": pct(route, 95), "max": max(route)},
    }
    ok = rows["send_to_result_s"]["p95"] <= 0.100 and cost <= 1000
    print()
    print(f"{'measure':<26} {'p50':>9} {'p95':>9} {'max':>9}")
    for name, r in rows.items():
        p50, p95, worst = (r[k] * 1000 for k in ("p50", "p95", "max"))
        print(f"{name:<26} {p50:>7.1f}ms {p95:>7.1f}ms {worst:>7.1f}ms")
    print(f"verify one command: {cost:.0f} µs (Ed25519 + canonical JSON)")
    print(f"targets: round trip p95 <= 100 ms, verify <= 1 ms: {'MET' if ok else 'NOT MET'}")
    write_result(
        "commands",
        {
            "benchmark": "commands",
            "commands": len(rtt),
            **rows,
            "verify_us": round(cost, 1),
            "targets_met": ok,
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d"),
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
