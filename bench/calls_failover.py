"""Benchmark: calls through Kamailio during a carrier failure, agent vs. Kamailio alone.

The call lab of tests/integration/test_calls_failover.py (tests/lib/calllab.py): a sipp
caller places 20 calls/s (2 s each, answered within 2 s or failed) through Kamailio's
dispatcher to two sipp carriers in their own namespaces. Each trial silences carrier A
(nftables drop) and counts the calls placed until routing recovered:
- agent: trunkguard probes and drives the dispatcher (Kamailio's probing off);
- kamailio-default: Kamailio's own dispatcher probing alone (ds_probing_mode 1), the
  shipped example's timers (ds_ping_interval 10 s, ds_probing_threshold 3, fr_timer 3 s);
- kamailio-tuned: the same with ds_ping_interval 1 s.
All in the same run, so the ratios compare like with like.

    sudo .venv/bin/python bench/calls_failover.py [--trials 10] [--kamailio-trials 3]

Prints a table and writes bench/results/calls_failover.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, pct, write_result  # noqa: E402
from tests.lib import calls, procs  # noqa: E402
from tests.lib.agentproc import Agent  # noqa: E402
from tests.lib.calllab import CALL_MS, RATE, URI_A, CallLab, call_lab  # noqa: E402
from trunkguard.core.health import HealthParams, detection_bound  # noqa: E402

PRE, POST = 2.0, 2.0
PHASE = random.Random(1)
# Probe every destination all the time (mode 1): mode 0 stops after the first answer.
PROBING = {"DS_PROBING_MODE": 1}  # seconds of calls before the silence and after recovery


def a_state(lab: CallLab) -> str:
    return lab.kamailio.states()[1][URI_A][0]


def trial(lab: CallLab, agent: Agent | None, tmp: Path) -> dict[str, Any]:
    """One outage: calls before, during and after; returns its numbers."""
    tmp.mkdir()
    started = time.time()
    with lab.caller(tmp, RATE * 120) as caller:
        # Calls flow through A; the silence then starts at a random phase of the probe
        # interval (the caller's own pace and the phase, not a synchronisation).
        time.sleep(PRE + PHASE.uniform(0.0, 1.0))
        mark = agent.mark() if agent else 0
        silenced = time.time()
        lab.carrier_a.drop_udp_in(5060)
        if agent is not None:
            ev = agent.wait_for(agent.applied("carrier-b"), 10, "reroute", mark)
            recovered = datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()
        else:
            procs.wait_for(lambda: a_state(lab) == "I", 90, "Kamailio marks A inactive", 0.05)
            recovered = time.time()
        time.sleep(POST + CALL_MS / 1000 + 2.5)  # let the last calls finish or fail
        placed_until = time.time() - CALL_MS / 1000 - 2.5
        procs.stop(caller.proc)
        outcomes = caller.outcomes()
    mark = agent.mark() if agent else 0
    lab.carrier_a.undrop()
    # A recovers before the next trial.
    if agent is not None:
        agent.wait_for(agent.applied("carrier-a"), 30, "failback", mark)
    else:
        procs.wait_for(lambda: a_state(lab) == "A", 90, "A active again", 0.05)
    attempted = [n for n in range(1, RATE * 120) if started + (n - 1) / RATE <= placed_until]
    bad = {n: v for n, v in calls.degraded(outcomes, RATE).items() if n in attempted}
    bad_at = sorted(started + (n - 1) / RATE for n in bad)
    return {
        "attempted": len(attempted),
        "failed": sum(v == "failed" for v in bad.values()),
        "late": sum(v == "late" for v in bad.values()),
        "window_s": (bad_at[-1] - bad_at[0]) if bad_at else 0.0,
        "reroute_s": recovered - silenced,
    }


def run_mode(name: str, trials: int, tmp: Path, **defines: int) -> list[dict[str, Any]]:
    out = []
    with call_lab(tmp, **defines) as lab:
        agent = (
            Agent(lab.agent_config(hold="1s"), netns=lab.sbc_ns.name) if name == "agent" else None
        )
        try:
            if agent:
                agent.wait_for(agent.applied("carrier-a"), 15, "initial state")
            for i in range(trials):
                r = trial(lab, agent, tmp / f"{name}-{i}")
                out.append(r)
                print(
                    f"{name:<17} trial {i + 1:2d}: {r['attempted']} calls, {r['failed']} failed, "
                    f"{r['late']} late, "
                    f"window {r['window_s'] * 1000:7.0f} ms, "
                    f"reroute {r['reroute_s'] * 1000:7.0f} ms",
                    flush=True,
                )
        finally:
            if agent:
                agent.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--kamailio-trials", type=int, default=3)
    args = ap.parse_args()
    bound = detection_bound(HealthParams(1.0, 0.2, 2, 3), 0.5)
    modes: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        modes["agent"] = run_mode("agent", args.trials, tmp / "a")
        modes["kamailio-default"] = run_mode(
            "kamailio-default", args.kamailio_trials, tmp / "k10", DS_PING_INTERVAL=10, **PROBING
        )
        modes["kamailio-tuned"] = run_mode(
            "kamailio-tuned", args.kamailio_trials, tmp / "k1", DS_PING_INTERVAL=1, **PROBING
        )
    rows = {}
    for name, rs in modes.items():
        w = [r["window_s"] for r in rs]
        rows[name] = {
            "trials": len(rs),
            "attempted": sum(r["attempted"] for r in rs),
            "failed": sum(r["failed"] for r in rs),
            "late": sum(r["late"] for r in rs),
            "window_p50_s": pct(w, 50),
            "window_max_s": max(w),
            "reroute_p50_s": pct([r["reroute_s"] for r in rs], 50),
        }
    agent_max = rows["agent"]["window_max_s"]
    ratio = rows["kamailio-default"]["window_p50_s"] / max(rows["agent"]["window_p50_s"], 1e-3)
    ok = agent_max <= bound + 0.2 and ratio >= 10
    print()
    head = ("mode", "calls", "failed", "late", "window p50", "window max", "reroute p50")
    print("{:<18} {:>6} {:>7} {:>6} {:>11} {:>11} {:>12}".format(*head))
    for name, r in rows.items():
        print(
            f"{name:<18} {r['attempted']:>6} {r['failed']:>7} {r['late']:>6} "
            f"{r['window_p50_s'] * 1000:>9.0f}ms {r['window_max_s'] * 1000:>9.0f}ms "
            f"{r['reroute_p50_s'] * 1000:>10.0f}ms"
        )
    print(
        f"agent window max {agent_max * 1000:.0f} ms vs bound + 200 ms = "
        f"{(bound + 0.2) * 1000:.0f} ms; Kamailio default / agent (p50): {ratio:.1f}x"
    )
    print("failed = error answer or none; late = answered > 2 s after placing (a retry)")
    print(f"targets: {'MET' if ok else 'NOT MET'}")
    out = {
        "benchmark": "calls_failover",
        "rate_per_s": RATE,
        "call_ms": CALL_MS,
        "answer_timeout_ms": 2000,
        "detection_bound_s": bound,
        "modes": rows,
        "ratio_default_over_agent_p50": ratio,
        "targets_met": ok,
        "samples": modes,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_result("calls_failover", out)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
