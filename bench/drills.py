"""Benchmark: drills through the real daemon, timed per phase, against the manual figures.

The two-carrier lab (tests/lib/topology.py): the daemon in a namespace with a veth link
to each carrier; sipp answers OPTIONS, and a second sipp per carrier answers calls and
echoes RTP, so each drill places real synthetic calls (pjsua2) through the new path
and the restored one. Each scenario runs --trials times with the lab's defaults.

    sudo .venv/bin/python bench/drills.py [--trials 5]

Prints a table and writes bench/results/drills.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, pct, write_result  # noqa: E402
from tests.lib.agentproc import Agent  # noqa: E402
from tests.lib.topology import two_carriers  # noqa: E402
from trunkguard.drills import MANUAL_S  # noqa: E402

SCENARIOS = ("carrier", "link")
PHASES = ("decision", "applied", "call_new_path", "restored", "total")
TARGET_S = {"carrier": 10.0, "link": 10.0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    results: dict[str, dict[str, list[float]]] = {s: {p: [] for p in PHASES} for s in SCENARIOS}
    with tempfile.TemporaryDirectory() as d, two_carriers(Path(d)) as lab:
        tmp = Path(d)
        cfg = lab.config(hold="30s", links=True)
        lab.with_call_checks(cfg)
        with lab.call_carriers():
            agent = Agent(cfg, netns=lab.agent.name)
            try:
                agent.wait_for(Agent.applied("carrier-a"), 30, "initial route")
                for c in ("via-a", "via-b"):
                    agent.wait_for(
                        lambda e, c=c: e.get("event") == "call check" and e.get("call") == c,
                        30,
                        c,
                    )
                for scenario in SCENARIOS:
                    for i in range(args.trials):
                        argv = [
                            sys.executable,
                            "-m",
                            "trunkguard",
                            "drill",
                            "--socket",
                            str(tmp / "control.sock"),
                            scenario,
                            "--json",
                        ]
                        res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
                        r = json.loads(res.stdout)
                        assert r["result"] == "passed" and r["left_as_found"], r
                        for p in PHASES:
                            results[scenario][p].append(r["phases"][p])
                        print(
                            f"{scenario:>8} {i + 1}: {r['phases']['total']:.2f} s "
                            f"(applied {r['phases']['applied'] * 1000:.0f} ms)",
                            flush=True,
                        )
            finally:
                agent.stop()
    rows = {
        s: {p: {"p50": pct(xs, 50), "max": max(xs)} for p, xs in ph.items()}
        for s, ph in results.items()
    }
    ok = all(rows[s]["total"]["max"] <= TARGET_S[s] for s in SCENARIOS)
    print()
    print(f"{'scenario':<9} {'phase':<15} {'p50':>9} {'max':>9}   by hand")
    for s in SCENARIOS:
        for p in PHASES:
            r = rows[s][p]
            hand = f"{MANUAL_S[s] / 60:g} min" if p == "total" else ""
            print(f"{s:<9} {p:<15} {r['p50'] * 1000:>7.0f}ms {r['max'] * 1000:>7.0f}ms   {hand}")
    print(f"target: each whole drill (with both calls) under 10 s: {'MET' if ok else 'NOT MET'}")
    write_result(
        "drills",
        {
            "benchmark": "drills",
            "trials": args.trials,
            "phases_s": rows,
            "manual_s": {s: MANUAL_S[s] for s in SCENARIOS},
            "targets_met": ok,
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d"),
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
