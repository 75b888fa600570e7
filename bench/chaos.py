"""Benchmark: faults of the neighbours and of the agent itself, for --minutes.

Real peers, as the call lab: Kamailio as the SBC (dispatcher set with carriers A and
B) and the agent driving it, in one namespace with a mosquitto the agent publishes
to; sipp carriers in namespaces of their own. In a loop, until the time is up:

  kamailio restart   Kamailio restarts (while A is down) with its dispatcher.list
                     states: A active again, a drift the agent must repair
  mosquitto restart  the broker restarts, retained state lost
  link down/up       carrier A's end of its link goes down, then up again
  reload             SIGHUP with a valid changed config, then with an invalid one
  kill -9            the agent is killed just after a failover (its state write
                     racing), and started again as systemd would

After every fault the routing Kamailio has (read back over its RPC) must equal what
the evidence says (A reachable: A and B active, else A disabled) within the bound.
A restart must not change Kamailio's routing (no flap) nor find its state file
corrupt. Each agent's open fds and RSS are sampled when it is settled and before it
stops.

    sudo .venv/bin/python bench/chaos.py [--minutes 10]

Prints a table and writes bench/results/chaos.json.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, write_result  # noqa: E402
from tests.lib import procs  # noqa: E402
from tests.lib.agentproc import Agent  # noqa: E402
from tests.lib.calllab import URI_A, URI_B, CallLab, call_lab  # noqa: E402
from tests.lib.mosquitto import Broker, broker  # noqa: E402
from trunkguard.core.health import HealthParams, detection_bound  # noqa: E402

BOUND = detection_bound(HealthParams(1.0, 0.2, 2, 3), 0.5)
DRIFT = 2.0  # actuators.drift_interval in the lab config
HOLD = 2.0


def expected(a_up: bool) -> dict[str, str]:
    """Kamailio's dispatcher flags' first letter for the path the evidence calls for."""
    return {URI_A: "A", URI_B: "A"} if a_up else {URI_A: "D", URI_B: "A"}


class Chaos:
    def __init__(self, lab: CallLab, mq: Broker, tmp: Path) -> None:
        self.lab, self.mq, self.tmp = lab, mq, tmp
        base = lab.agent_config(hold=f"{HOLD:g}s").read_text()
        self.good = base.replace("metrics: null\n", f"metrics: null\nstate_dir: {tmp}/state\n")
        self.good += f"mqtt: {{host: {mq.host}, port: {mq.port}, keepalive: 2s}}\n"
        self.cfg = tmp / "trunkguard.yaml"
        self.cfg.write_text(self.good)
        self.agent: Agent | None = None
        self.a_up = True
        self.samples: list[dict[str, Any]] = []  # per agent life: fds and RSS
        self.faults: list[dict[str, Any]] = []
        self.corrupt = 0
        self.flaps = 0
        self.if_a = self._carrier_if()

    def _carrier_if(self) -> str:
        out = self.lab.carrier_a.ip("-o", "link", "show").stdout
        return next(ln.split(": ")[1].split("@")[0] for ln in out.splitlines() if "lo:" not in ln)

    def start(self) -> None:
        self.agent = Agent(self.cfg, netns=self.lab.sbc_ns.name)
        a = self.agent
        a.wait_for(lambda e: e.get("event") == "started", 15, "agent started")
        self.converge(15, "agent start")
        time.sleep(3)  # settled: what start-up allocates is not growth (not a sync)
        self.samples.append({"pid": a.proc.pid, "settled": self._usage(a.proc.pid)})

    def stop_agent(self, kill: bool) -> None:
        a = self.agent
        assert a is not None
        self.samples[-1]["end"] = self._usage(a.proc.pid)
        if kill:
            a.signal(signal.SIGKILL)
        a.stop()
        a.drain()
        self.corrupt += sum(1 for e in a.events if e.get("event") == "state file unusable")

    @staticmethod
    def _usage(pid: int) -> dict[str, int]:
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        rss = next(int(x.split()[1]) for x in status if x.startswith("VmRSS:"))
        return {"fds": fds, "rss_kb": rss}

    def routing(self) -> dict[str, str]:
        try:
            states = self.lab.kamailio.states().get(1, {})
        except RuntimeError:  # Kamailio restarting
            return {}
        return {uri: flags[:1] for uri, flags in states.items()}

    def converge(self, within: float, what: str) -> float:
        start = time.monotonic()
        want = expected(self.a_up)
        procs.wait_for(lambda: self.routing() == want, within, f"routing after {what}", 0.05)
        return time.monotonic() - start

    def fault(self, name: str, action: Callable[[], float]) -> None:
        t = action()
        self.faults.append({"fault": name, "converged_s": round(t, 3)})
        print(f"{name:<22} converged in {t * 1000:7.0f} ms", flush=True)

    # ---- the faults -------------------------------------------------------------------

    def kamailio_restart(self) -> float:
        self.lab.kamailio.restart()  # reloads dispatcher.list: routing as on disk
        return self.converge(DRIFT + 5, "kamailio restart")

    def mosquitto_restart(self) -> float:
        assert self.agent is not None
        mark = self.agent.mark()
        self.mq.restart()
        self.agent.wait_for(
            lambda e: e.get("event") == "mqtt connected", 30, "mqtt reconnect", mark
        )
        return self.converge(5, "mosquitto restart")

    def link(self, up: bool) -> float:
        self.lab.carrier_a.ip("link", "set", self.if_a, "up" if up else "down")
        self.a_up = up
        return self.converge(BOUND + HOLD + 5, f"link {'up' if up else 'down'}")

    def reload(self) -> float:
        assert self.agent is not None
        a = self.agent
        mark = a.mark()
        self.cfg.write_text(self.good.replace(f"hold: {HOLD:g}s", f"hold: {HOLD + 1:g}s"))
        a.signal(signal.SIGHUP)
        a.wait_for(lambda e: e.get("event") == "config reloaded", 10, "reloaded", mark)
        mark = a.mark()
        self.cfg.write_text(self.good.replace("probe: {", "probe: {interval: 5, "))
        a.signal(signal.SIGHUP)
        a.wait_for(
            lambda e: str(e.get("event", "")).startswith("reload rejected"), 10, "rejected", mark
        )
        self.cfg.write_text(self.good)
        return self.converge(5, "reload")

    def kill9(self) -> float:
        assert self.agent is not None
        mark = self.agent.mark()
        self.lab.carrier_a.ip("link", "set", self.if_a, "down")
        self.a_up = False
        # Killed right after the failover decision: the intent write is racing.
        self.agent.wait_for(
            lambda e: e.get("event") == "route change" and e.get("kind") == "failover",
            BOUND + 5,
            "failover",
            mark,
        )
        self.stop_agent(kill=True)
        self.lab.carrier_a.ip("link", "set", self.if_a, "up")
        self.a_up = True
        start = time.monotonic()
        self.start()  # as systemd would
        assert self.agent is not None
        decisions = [e for e in self.agent.events if e.get("event") == "route change"]
        # The restarted agent resumes what it restored ("initial" only without a saved
        # state) and fails back after hold: any other move is a flap.
        self.flaps += sum(1 for e in decisions if e.get("kind") not in ("initial", "failback"))
        return time.monotonic() - start


def summarize(ch: Chaos, minutes: float) -> dict[str, Any]:
    by: dict[str, list[float]] = {}
    for f in ch.faults:
        by.setdefault(f["fault"], []).append(f["converged_s"])
    growth = [
        {
            "fds": s["end"]["fds"] - s["settled"]["fds"],
            "rss_kb": s["end"]["rss_kb"] - s["settled"]["rss_kb"],
        }
        for s in ch.samples
        if "end" in s
    ]
    return {
        "minutes": minutes,
        "faults": {k: {"n": len(v), "max_converged_s": max(v)} for k, v in by.items()},
        "agent_lives": len(ch.samples),
        "fd_growth_max": max((g["fds"] for g in growth), default=0),
        "rss_growth_kb_max": max((g["rss_kb"] for g in growth), default=0),
        "corrupt_state_files": ch.corrupt,
        "restart_flaps": ch.flaps,
        "samples": ch.samples,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with call_lab(tmp) as lab, broker(tmp / "mq", netns=lab.sbc_ns.name) as mq:
            ch = Chaos(lab, mq, tmp)
            ch.start()
            end = time.monotonic() + args.minutes * 60
            # Kamailio restarts while A is down: its dispatcher.list says A is active,
            # so the agent has to find and repair the drift.
            plan: list[tuple[str, Callable[[], float]]] = [
                ("link down", lambda: ch.link(False)),
                ("kamailio restart", ch.kamailio_restart),
                ("mosquitto restart", ch.mosquitto_restart),
                ("link up", lambda: ch.link(True)),
                ("sighup valid+invalid", ch.reload),
                ("kill -9 and restart", ch.kill9),
            ]
            i = 0
            try:
                while time.monotonic() < end:
                    ch.fault(*plan[i % len(plan)])
                    i += 1
                    time.sleep(1)
            finally:
                ch.stop_agent(kill=False)
    res = summarize(ch, args.minutes)
    bounds = {
        "kamailio restart": DRIFT + 5,
        "mosquitto restart": 5,
        "link down": BOUND + HOLD + 5,
        "link up": BOUND + HOLD + 5,
        "sighup valid+invalid": 5,
        "kill -9 and restart": 30,
    }
    print()
    print(f"{'fault':<22} {'n':>3} {'max converged':>14}")
    for k, v in res["faults"].items():
        print(f"{k:<22} {v['n']:>3} {v['max_converged_s'] * 1000:>11.0f} ms")
    print(
        f"agent lives {res['agent_lives']}, fd growth max {res['fd_growth_max']}, "
        f"RSS growth max {res['rss_growth_kb_max'] / 1024:.1f} MB, corrupt state files "
        f"{res['corrupt_state_files']}, restart flaps {res['restart_flaps']}"
    )
    ok = (
        res["corrupt_state_files"] == 0
        and res["restart_flaps"] == 0
        and res["fd_growth_max"] <= 2
        and res["rss_growth_kb_max"] < 10_240
        and all(v["max_converged_s"] <= bounds[k] for k, v in res["faults"].items())
    )
    print(f"targets: {'MET' if ok else 'NOT MET'}")
    write_result(
        "chaos",
        {
            "benchmark": "chaos",
            **res,
            "bounds_s": bounds,
            "targets_met": ok,
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d"),
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
