"""Benchmark: every drill scenario through the real daemon, timed per phase, against the
manual figures (4 min carrier, 3 min platform, 14 min site by hand).

carrier, platform, site and cooling run in the SBC lab (tests/lib/sbclab.py): the
daemon steering the shipped Kamailio config in front of two sipp carriers and a remote
site, each drill placing real synthetic calls (pjsua2) through the new path and the
restored one. link runs in the two-carrier namespace lab (tests/lib/topology.py),
where the uplink is a veth pair and the route a kernel route. Each scenario runs
--trials times with the labs' defaults.

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
from tests.lib.sbclab import sbc_lab  # noqa: E402
from tests.lib.topology import two_carriers  # noqa: E402
from trunkguard.drills import MANUAL_S  # noqa: E402

SBC_SCENARIOS = ("carrier", "platform", "site", "cooling")
SCENARIOS = (*SBC_SCENARIOS, "link")
PHASES = ("detected", "decision", "applied", "call_new_path", "restored", "total")
TARGET_S = {"carrier": 10.0, "platform": 10.0, "link": 10.0, "site": 20.0, "cooling": 20.0}

Results = dict[str, dict[str, list[float]]]


def ready(agent: Agent, first: str, checks: tuple[str, ...]) -> None:
    agent.wait_for(Agent.applied(first), 30, "initial route")
    agent.checks_passed(*checks)


def trials(socket: Path, scenarios: tuple[str, ...], n: int, out: Results) -> None:
    for scenario in scenarios:
        for i in range(n):
            argv = [sys.executable, "-m", "trunkguard", "drill", "--socket", str(socket)]
            res = subprocess.run(
                [*argv, scenario, "--json"], capture_output=True, text=True, timeout=120
            )
            r = json.loads(res.stdout)
            assert r["result"] == "passed" and r["left_as_found"], r
            for p, v in r["phases"].items():
                out[scenario].setdefault(p, []).append(v)
            print(
                f"{scenario:>8} {i + 1}: {r['phases']['total']:.2f} s "
                f"(applied {r['phases']['applied'] * 1000:.0f} ms)",
                flush=True,
            )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    results: Results = {s: {} for s in SCENARIOS}
    with tempfile.TemporaryDirectory() as d, sbc_lab(Path(d)) as lab:
        agent = Agent(lab.config())
        try:
            ready(agent, "carrier-a", ("via-sbc", "via-site"))
            trials(lab.socket, SBC_SCENARIOS, args.trials, results)
        finally:
            agent.stop()
    with tempfile.TemporaryDirectory() as d, two_carriers(Path(d)) as lab2:
        cfg = lab2.config(hold="30s", links=True)
        lab2.with_call_checks(cfg)
        with lab2.call_carriers():
            agent = Agent(cfg, netns=lab2.agent.name)
            try:
                ready(agent, "carrier-a", ("via-a", "via-b"))
                trials(Path(d) / "control.sock", ("link",), args.trials, results)
            finally:
                agent.stop()
    rows = {
        s: {p: {"p50": pct(xs, 50), "max": max(xs)} for p, xs in ph.items()}
        for s, ph in results.items()
    }
    ok = all(rows[s]["total"]["max"] <= TARGET_S[s] for s in SCENARIOS)
    print()
    print(f"{'scenario':<9} {'phase':<15} {'p50':>9} {'max':>9}   target   by hand")
    for s in SCENARIOS:
        for p in (p for p in PHASES if p in rows[s]):
            r = rows[s][p]
            hand = f"{TARGET_S[s]:>4g} s   {MANUAL_S[s] / 60:g} min" if p == "total" else ""
            print(f"{s:<9} {p:<15} {r['p50'] * 1000:>7.0f}ms {r['max'] * 1000:>7.0f}ms   {hand}")
    print(f"targets (whole drill with both calls): {'MET' if ok else 'NOT MET'}")
    write_result(
        "drills",
        {
            "benchmark": "drills",
            "trials": args.trials,
            "phases_s": rows,
            "targets_s": TARGET_S,
            "manual_s": {s: MANUAL_S[s] for s in SCENARIOS},
            "targets_met": ok,
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d"),
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
