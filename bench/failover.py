"""Benchmark: a carrier goes silent -> the kernel route is moved to the other carrier.

Real peers: sipp answering OPTIONS behind veth links in network namespaces, the
agent (python -m trunkguard run) in its own namespace, nftables dropping the carrier's
inbound SIP (silence, no ICMP). The route change is observed independently with
`ip monitor route` in the agent's namespace; the silence starts at a random phase of
the probe interval in each trial.

    sudo .venv/bin/python bench/failover.py [--trials 20]

Prints a table and writes bench/results/failover.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, pct, write_result  # noqa: E402
from tests.lib.agentproc import Agent  # noqa: E402
from tests.lib.ipmonitor import IpMonitor, route_via  # noqa: E402
from tests.lib.topology import GW_A, GW_B, PREFIX, two_carriers  # noqa: E402
from trunkguard.core.health import HealthParams, detection_bound  # noqa: E402

SETTINGS = {"interval": 1.0, "fast_interval": 0.2, "timeout": 0.5, "rise": 2, "fall": 3}
APPLY_ALLOWANCE = 0.010  # decision to applied, the target for netlink


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    s = SETTINGS
    bound = detection_bound(
        HealthParams(s["interval"], s["fast_interval"], s["rise"], s["fall"]), s["timeout"]
    )
    worst = bound + APPLY_ALLOWANCE
    silence_to_route: list[float] = []
    decision_to_applied: list[float] = []
    with tempfile.TemporaryDirectory() as d, two_carriers(Path(d)) as lab:
        cfg = lab.config(hold="1s", interval="1s", fast="200ms", timeout="500ms", rise=2, fall=3)
        watch = IpMonitor(lab.agent.name, ["route"], route_via(PREFIX))
        agent = Agent(cfg, netns=lab.agent.name)
        try:
            agent.wait_for(agent.applied("carrier-a"), 15, "initial route")
            for i in range(args.trials):
                # Random phase against the probe schedule, then silence carrier A.
                time.sleep(rng.uniform(0.0, s["interval"]))
                mark = agent.mark()
                t0 = time.monotonic()
                lab.carrier_a.drop_udp_in(5060)
                t_route = watch.wait(f"via {GW_B}", t0, 10)
                applied = agent.wait_for(agent.applied("carrier-b"), 5, "applied", since=mark)
                silence_to_route.append(t_route - t0)
                decision_to_applied.append(applied["apply_ms"] / 1000)
                print(
                    f"trial {i + 1:2d}: silence -> route via B {1000 * (t_route - t0):7.1f} ms, "
                    f"decision -> applied {applied['apply_ms']:.2f} ms",
                    flush=True,
                )
                mark = agent.mark()
                t1 = time.monotonic()
                lab.carrier_a.undrop()
                watch.wait(f"via {GW_A}", t1, 15)
                agent.wait_for(agent.applied("carrier-a"), 5, "failback", since=mark)
        finally:
            agent.stop()
            watch.close()
    rows = {
        "silence_to_route_s": {
            "p50": pct(silence_to_route, 50),
            "p95": pct(silence_to_route, 95),
            "max": max(silence_to_route),
            "min": min(silence_to_route),
        },
        "decision_to_applied_s": {
            "p50": pct(decision_to_applied, 50),
            "p95": pct(decision_to_applied, 95),
            "max": max(decision_to_applied),
        },
    }
    ok = (
        rows["silence_to_route_s"]["p95"] <= 2.5
        and rows["silence_to_route_s"]["max"] <= worst
        and rows["decision_to_applied_s"]["max"] <= 0.010
    )
    print()
    print(f"{'measure':<28} {'p50':>9} {'p95':>9} {'max':>9}")
    for name, r in rows.items():
        print(
            f"{name:<28} {r['p50'] * 1000:>7.1f}ms {r['p95'] * 1000:>7.1f}ms "
            f"{r['max'] * 1000:>7.1f}ms"
        )
    print(
        f"{'documented worst case':<28} {worst * 1000:>29.1f}ms  "
        f"(interval + timeout + max(timeout, fast) + (fall-2)*fast + 10 ms apply)"
    )
    print(
        "anchors (defaults, not measured here): Kamailio dispatcher ~30 s, Acme Packet 32 s, "
        "keepalived 3.5 s"
    )
    print(
        f"targets: p95 <= 2500 ms, max <= worst case, decision->applied <= 10 ms: "
        f"{'MET' if ok else 'NOT MET'}"
    )
    out = {
        "benchmark": "failover",
        "trials": args.trials,
        "settings": s,
        "documented_worst_case_s": worst,
        "detection_bound_s": bound,
        **rows,
        "targets_met": ok,
        "samples_silence_to_route_s": silence_to_route,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_result("failover", out)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
