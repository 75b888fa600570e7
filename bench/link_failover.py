"""Benchmark: carrier loss on the active uplink -> the replacement route applied.

Real kernel: the agent (python -m trunkguard run) in its own network namespace with a
veth uplink to each carrier (sipp answering OPTIONS behind each). Each trial takes
the carrier's end of uplink A down, so the agent's end loses carrier. One
independent `ip monitor link route` in the agent's namespace timestamps both the
carrier loss and the route change (same reader, same latency, so the difference is
kernel event -> route applied). Trials are at least 1.2 s apart: the kernel
rate-limits link events to about one a second.

Side by side in the same run: the same failure detected by SIP probes alone (the
agent without a `links` section), so the ratio is measured on one machine at once.

    sudo .venv/bin/python bench/link_failover.py [--trials 20] [--probe-trials 5]

Prints a table and writes bench/results/link_failover.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, pct, write_result  # noqa: E402
from tests.lib.agentproc import Agent  # noqa: E402
from tests.lib.ipmonitor import Classify, IpMonitor, route_via  # noqa: E402
from tests.lib.topology import GW_A, GW_B, PREFIX, Lab, two_carriers  # noqa: E402

TARGET_P95 = 0.050
MIN_GAP = 1.2


def carrier_loss_or_route(ifname: str) -> Classify:
    """'nocarrier' when `ifname` loses carrier, 'via <gw>' when PREFIX is routed."""
    via = route_via(PREFIX)

    def classify(line: str) -> str | None:
        if f" {ifname}@" in line and "NO-CARRIER" in line:
            return "nocarrier"
        return None if line.startswith("Deleted") else via(line)

    return classify


def run_trials(lab: Lab, links: bool, trials: int, announce: list[float]) -> list[float]:
    if_a, peer_a = lab.links["a"]
    mon = IpMonitor(lab.agent.name, ["link", "route"], carrier_loss_or_route(if_a))
    # A fresh agent for each variant, not a restart that restores the last one's routing.
    shutil.rmtree(lab.tmp / "state", ignore_errors=True)
    agent = Agent(lab.config(hold="1s", links=links), netns=lab.agent.name)
    out: list[float] = []
    last_event = 0.0
    try:
        agent.wait_for(agent.applied("carrier-a"), 15, "initial route")
        for i in range(trials):
            time.sleep(max(0.0, last_event + MIN_GAP - time.monotonic()))
            mark = agent.mark()
            t0 = time.monotonic()
            lab.carrier_a.ip("link", "set", peer_a, "down")
            t_loss = mon.wait("nocarrier", t0, 5)
            t_route = mon.wait(f"via {GW_B}", t0, 10)
            agent.wait_for(agent.applied("carrier-b"), 5, "applied", since=mark)
            out.append(t_route - t_loss)
            announce.append(t_loss - t0)
            label = "link watcher" if links else "probes only"
            print(
                f"{label} trial {i + 1:2d}: carrier loss -> route via B "
                f"{1000 * (t_route - t_loss):8.2f} ms",
                flush=True,
            )
            time.sleep(max(0.0, t_loss + MIN_GAP - time.monotonic()))
            mark = agent.mark()
            t1 = time.monotonic()
            lab.carrier_a.ip("link", "set", peer_a, "up")
            mon.wait(f"via {GW_A}", t1, 20)
            agent.wait_for(agent.applied("carrier-a"), 5, "failback", since=mark)
            last_event = time.monotonic()
    finally:
        agent.stop()
        mon.close()
    return out


def summary(xs: list[float]) -> dict[str, float]:
    return {"p50": pct(xs, 50), "p95": pct(xs, 95), "max": max(xs), "min": min(xs)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--probe-trials", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, two_carriers(Path(d)) as lab:
        announce: list[float] = []
        link = run_trials(lab, True, args.trials, announce)
        probes = run_trials(lab, False, args.probe_trials, []) if args.probe_trials else []
    rows = {"link_watcher": summary(link)}
    if probes:
        rows["probes_only"] = summary(probes)
    ok = rows["link_watcher"]["p95"] <= TARGET_P95
    print()
    print(f"{'carrier loss -> route applied':<30} {'p50':>10} {'p95':>10} {'max':>10}")
    for name, r in rows.items():
        print(
            f"{name:<30} {r['p50'] * 1000:>8.2f}ms {r['p95'] * 1000:>8.2f}ms "
            f"{r['max'] * 1000:>8.2f}ms"
        )
    ratio = None
    if probes:
        ratio = rows["probes_only"]["p50"] / rows["link_watcher"]["p50"]
        print(f"probes only / link watcher (p50): {ratio:.0f}x")
    a = summary(announce)
    print(
        f"(before that, the kernel announced the carrier loss {a['p50'] * 1000:.0f} ms "
        f"(p50) / {a['max'] * 1000:.0f} ms (max) after `ip link set` began: linkwatch)"
    )
    print("anchors (not measured here): BFD tuned hard 150 ms, keepalived ~3.5 s")
    print(f"target: link watcher p95 <= 50 ms: {'MET' if ok else 'NOT MET'}")
    out = {
        "benchmark": "link_failover",
        "trials": args.trials,
        "probe_trials": args.probe_trials,
        "min_gap_s": MIN_GAP,
        "settings": {"up_hold": "1s", "probe": "interval 1s, fast 200ms, timeout 500ms, fall 3"},
        **{f"{k}_s": v for k, v in rows.items()},
        "ratio_probes_over_link_p50": ratio,
        "kernel_announcement_s": summary(announce),
        "targets_met": ok,
        "samples_link_watcher_s": link,
        "samples_probes_only_s": probes,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_result("link_failover", out)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
