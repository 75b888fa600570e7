"""Benchmark: false failovers on a lossy but working path, and detection of a real silence.

Real peers, as the two-carrier lab: the agent (python -m trunkguard run) in its own
namespace probing two sipp carriers behind veth links, 50 trunks each (distinct
Request-URIs, 100 in all), 50 route groups (a-i, else b-i). In each carrier's namespace
nftables drops N % of the SIP datagrams each way at random (`numgen random mod 100 <
N`, input and output); tc netem is used where the kernel has it, else said so.

For each loss level and each variant of the retransmission timer, in parallel (one
topology each): a soak of --minutes with the defaults, counting trunk-down transitions
and failovers (all false: no carrier ever stops), then --trials silences of carrier A
(an nftables drop of everything) at a random phase, timing each of its 50 trunks from
the silence to "down" by the agent's own log timestamps.

Variants: "fixed" is RFC 3261's fixed Timer E (sip.min_t1 = t1 = 500 ms: no copy is
resent within the 500 ms deadline, the behaviour before the RTT-adaptive timer);
"adaptive" is the default (first retransmission after the measured RTT allows, 62.5 ms
on these links); "kamailio" is no agent but Kamailio's own dispatcher probing the same
100 destinations at its tuned setting (ds_ping_interval 1 s, probing mode 1, threshold
3), its "destination down" events counted (a soak only: its detection time is in
bench/calls_failover.py).

    sudo .venv/bin/python bench/loss_soak.py [--minutes 10] [--losses 1,5,10,20]

Prints a table and writes bench/results/loss_soak.json.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, pct, write_result  # noqa: E402
from tests.lib import sipp  # noqa: E402
from tests.lib.agentproc import Agent, Event  # noqa: E402
from tests.lib.kamailio import sbc, write_ds_list  # noqa: E402
from tests.lib.netns import Netns, namespaces, veth  # noqa: E402
from tests.lib.topology import GW_A, GW_B  # noqa: E402
from trunkguard.core.health import HealthParams, detection_bound  # noqa: E402

PER_CARRIER = 50
VARIANTS = {"fixed": "sip: {min_t1: 500ms}\n", "adaptive": "", "kamailio": ""}
SBC_IP = "192.0.2.2"
BOUND = detection_bound(HealthParams(1.0, 0.2, 2, 3), 0.5)  # the defaults


def netem_available() -> bool:
    name = "tgnetemprobe"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        r = subprocess.run(
            ["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "netem"],
            capture_output=True,
            text=True,
            check=False,
        )
        return r.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def lossy(ns: Netns, percent: int) -> None:
    ns.nft(
        "table inet tgloss {\n"
        " chain in { type filter hook input priority -5;"
        f" udp dport 5060 numgen random mod 100 < {percent} drop; }}\n"
        " chain out { type filter hook output priority -5;"
        f" udp sport 5060 numgen random mod 100 < {percent} drop; }}\n"
        "}\n"
    )


def config(tmp: Path, extra: str) -> Path:
    trunks = "".join(
        f'  {c}-{i:03d}: {{uri: "sip:t{i}@{gw}:5060"}}\n'
        for c, gw in (("a", GW_A), ("b", GW_B))
        for i in range(PER_CARRIER)
    )
    groups = "".join(
        f"  g{i:03d}:\n    paths:\n"
        f"      - {{name: a, requires: [trunk:a-{i:03d}]}}\n"
        f"      - {{name: b, requires: [trunk:b-{i:03d}]}}\n"
        for i in range(PER_CARRIER)
    )
    path = tmp / "trunkguard.yaml"
    path.write_text(
        f"site: lab\nnode: soak\nlog_level: info\ncontrol: {{socket: {tmp}/control.sock}}\n"
        f"metrics: null\n{extra}trunks:\n{trunks}routes:\n{groups}"
    )
    return path


def wall(e: Event) -> float:
    return datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00")).timestamp()


def down(e: Event, prefix: str = "trunk:") -> bool:
    return (
        e.get("event") == "target transition"
        and str(e.get("target", "")).startswith(prefix)
        and e.get("new") == "down"
    )


class Run:
    """One topology: variant x loss level."""

    agent: Agent

    def __init__(self, stack: ExitStack, variant: str, loss: int, tmp: Path) -> None:
        self.variant, self.loss = variant, loss
        self.soak_from = 0
        self.soak_s = 0.0
        self.false_downs = self.false_failovers = 0
        self.detect: list[float] = []
        self.already_down = 0
        ag, ca, cb = stack.enter_context(namespaces("ls", "la", "lb"))
        self.ca = ca
        veth(ag, f"{SBC_IP}/24", ca, f"{GW_A}/24")
        veth(ag, "198.51.100.2/24", cb, f"{GW_B}/24")
        cb.ip("route", "add", f"{SBC_IP}/32", "via", "198.51.100.2")  # Kamailio's source
        for ns, ip in ((ca, GW_A), (cb, GW_B)):
            stack.enter_context(sipp.options_responder(tmp, ip, 5060, netns=ns.name))
            lossy(ns, loss)
        self.kamailio_log: Path | None = None
        if variant == "kamailio":
            rows = [
                (1 if c == "a" else 2, f"sip:t{i}@{gw}:5060", 8, 10, "")
                for c, gw in (("a", GW_A), ("b", GW_B))
                for i in range(PER_CARRIER)
            ]
            ds = write_ds_list(tmp / "dispatcher.list", rows)
            k = stack.enter_context(
                sbc(
                    tmp,
                    ds,
                    sip_ip=SBC_IP,
                    sip_port=5060,
                    rpc_port=5071,
                    netns=ag.name,
                    DS_PING_INTERVAL=1,
                    DS_PROBING_MODE=1,
                    DS_PROBING_THRESHOLD=3,
                )
            )
            self.kamailio_log = k.log
            return
        self.agent = Agent(config(tmp, VARIANTS[variant]), netns=ag.name)
        stack.callback(self.agent.stop)

    def kamailio_downs(self) -> int:
        assert self.kamailio_log is not None
        return self.kamailio_log.read_text(errors="replace").count("destination down")

    def soak_start(self) -> None:
        if self.kamailio_log is not None:
            self.soak_from = self.kamailio_downs()
            return
        self.agent.drain()
        self.soak_from = len(self.agent.events)

    def ready(self) -> None:
        if self.kamailio_log is not None:
            time.sleep(3)  # its first pings (it marks nothing down at start)
            return
        applied = 0

        def initial(e: Event) -> bool:
            nonlocal applied
            applied += e.get("event") == "route applied"
            return applied >= PER_CARRIER

        self.agent.wait_for(initial, 60, "every group's initial route")

    def soak_end(self) -> None:
        if self.kamailio_log is not None:
            self.false_downs = self.kamailio_downs() - self.soak_from
            return
        self.agent.drain()
        evs = self.agent.events[self.soak_from :]
        self.false_downs = sum(1 for e in evs if down(e))
        self.false_failovers = sum(
            1 for e in evs if e.get("event") == "route change" and e.get("kind") == "failover"
        )

    def trials(self, n: int, rng: random.Random) -> None:
        if self.kamailio_log is not None:
            return
        a = self.agent
        for _ in range(n):
            time.sleep(rng.uniform(0.0, 1.0))  # random phase against the probe schedule
            a.drain()
            mark = len(a.events)
            t0 = time.time()
            self.ca.drop_udp_in(5060)
            seen: dict[str, float] = {}
            end = time.monotonic() + BOUND + 5
            while len(seen) < PER_CARRIER and time.monotonic() < end:
                time.sleep(0.1)
                a.drain()
                for e in a.events[mark:]:
                    if down(e, "trunk:a-") and e["target"] not in seen:
                        seen[e["target"]] = wall(e) - t0
            self.detect += seen.values()
            self.already_down += PER_CARRIER - len(seen)
            self.ca.undrop()
            time.sleep(BOUND + 3)  # rise 2 at 200 ms: back up long before this


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--losses", default="1,5,10,20")
    ap.add_argument("--variants", default="fixed,adaptive,kamailio")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    losses = [int(x) for x in args.losses.split(",")]
    variants = args.variants.split(",")
    netem = netem_available()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as d, ExitStack() as stack:
        runs = []
        for v in variants:
            for loss in losses:
                tmp = Path(d) / f"{v}-{loss}"
                tmp.mkdir()
                runs.append(Run(stack, v, loss, tmp))
        for r in runs:
            r.ready()
        print(f"{len(runs)} agents ready; soaking {args.minutes:g} min", flush=True)
        t0 = time.monotonic()
        for r in runs:
            r.soak_start()
        time.sleep(args.minutes * 60)
        for r in runs:
            r.soak_end()
            r.soak_s = time.monotonic() - t0
        print("soak done; silences", flush=True)
        threads = [
            threading.Thread(target=r.trials, args=(args.trials, random.Random(rng.random())))
            for r in runs
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    rows = []
    for r in runs:
        trunk_hours = 2 * PER_CARRIER * r.soak_s / 3600
        rows.append(
            {
                "variant": r.variant,
                "loss_percent_each_way": r.loss,
                "trunk_hours": round(trunk_hours, 2),
                "false_trunk_downs": r.false_downs,
                "false_downs_per_1000_trunk_hours": round(1000 * r.false_downs / trunk_hours, 1),
                "false_failovers": None if r.kamailio_log else r.false_failovers,
                "detection_samples": len(r.detect),
                "detection_p50_s": pct(r.detect, 50) if r.detect else None,
                "detection_p95_s": pct(r.detect, 95) if r.detect else None,
                "detection_max_s": max(r.detect) if r.detect else None,
                "down_before_silence": r.already_down,
            }
        )
    print()
    print(
        f"{'variant':<9} {'loss':>5} {'trunk-h':>8} {'false downs':>11} {'/1000 th':>9} "
        f"{'failovers':>9} {'detect p50':>10} {'p95':>8} {'max':>8} {'n':>4}"
    )
    for x in rows:

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f}ms"

        print(
            f"{x['variant']:<9} {x['loss_percent_each_way']:>4}% {x['trunk_hours']:>8.1f} "
            f"{x['false_trunk_downs']:>11} {x['false_downs_per_1000_trunk_hours']:>9} "
            f"{'-' if x['false_failovers'] is None else x['false_failovers']:>9} "
            f"{ms(x['detection_p50_s']):>10} "
            f"{ms(x['detection_p95_s']):>8} {ms(x['detection_max_s']):>8} "
            f"{x['detection_samples']:>4}"
        )
    print(f"detection bound (defaults): {BOUND * 1000:.0f} ms; netem available: {netem}")
    adaptive = {x["loss_percent_each_way"]: x for x in rows if x["variant"] == "adaptive"}
    ok = all(
        adaptive[loss]["false_trunk_downs"] == 0 and adaptive[loss]["trunk_hours"] >= 16
        for loss in (5, 10)
        if loss in adaptive
    ) and all(
        x["detection_p95_s"] is not None and x["detection_p95_s"] <= BOUND
        for x in adaptive.values()
    )
    print(
        "target (adaptive, defaults): 0 false trunk-downs over >= 16 trunk-hours at 5 % and "
        f"10 %, detection p95 <= {BOUND * 1000:.0f} ms: {'MET' if ok else 'NOT MET'}"
    )
    write_result(
        "loss_soak",
        {
            "benchmark": "loss_soak",
            "minutes": args.minutes,
            "trunks": 2 * PER_CARRIER,
            "trials": args.trials,
            "loss": "nftables numgen random, each way (input and output of each carrier)",
            "netem": "available" if netem else "not available on this kernel: nftables only",
            "settings": "defaults: interval 1s, fast 200ms, timeout 500ms, rise 2, fall 3",
            "detection_bound_s": BOUND,
            "rows": rows,
            "targets_met": ok,
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d"),
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
