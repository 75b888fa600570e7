"""Benchmark: the real daemon probing 1,000 and 10,000 UDP trunks once a second.

Real peers: one local Kamailio answering OPTIONS (tests.lib.kamailio), the agent as
`python -m trunkguard run -c <generated config>` with N trunks (distinct request URIs
sip:tNNNNN@127.0.0.1:<port>), no routes, and as the reference sipp as a UAC sending
the same OPTIONS at the same rate (-r N -rp 1000) to the same Kamailio.

For each scale: warm-up, then a measurement window (default 30 s) during which we read
  * CPU of the agent (utime+stime from /proc/<pid>/stat), peak RSS (VmHWM),
  * Kamailio's CPU (all its processes) to show it is not the bottleneck,
  * Prometheus deltas: answered probes and RTT histogram, probe failures by reason,
    unmatched responses; the event-loop lag gauge polled every 0.5 s,
then sipp runs alone for the same window length and its CPU per OPTIONS is the yardstick.
Metrics are scraped with `name[]` filters only, and the two big scrapes sit outside
the CPU window.

    .venv/bin/python bench/probe_scale.py [--trunks 1000,10000] [--window 30] [--warmup 10]

Prints a table and writes bench/results/probe_scale.json.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import pct, write_result  # noqa: E402
from tests.lib.kamailio import kamailio  # noqa: E402
from tests.lib.procs import free_port, tcp_listening, wait_for  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
TARGETS = {"cpu_pct": 60.0, "rss_mb": 200.0, "lost": 0, "cpu_per_probe_vs_sipp": 4.0}
SIPP_UAC = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options uac (trunkguard probe_scale reference)">
  <send retrans="500">
    <![CDATA[
OPTIONS sip:t[call_number]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
Max-Forwards: 70
From: <sip:sipp@[local_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:t[call_number]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 OPTIONS
Contact: <sip:sipp@[local_ip]:[local_port]>
Accept: application/sdp
User-Agent: sipp
Content-Length: 0

    ]]>
  </send>
  <recv response="200" timeout="2000" />
</scenario>
"""


# ---- /proc ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / HZ  # fields 14, 15 of proc(5)


def tree_pids(root: int) -> list[int]:
    """root and all its descendants (Kamailio forks its workers)."""
    children: dict[int, list[int]] = defaultdict(list)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            children[int(stat[stat.rindex(")") + 2 :].split()[1])].append(int(d.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # a worker may have exited
            total += cpu_seconds(pid)
    return total


def udp_rcvbuf_errors() -> int:
    """System-wide UDP datagrams dropped because a socket's receive buffer was full."""
    lines = [
        ln.split()
        for ln in Path("/proc/net/snmp").read_text().splitlines()
        if ln.startswith("Udp:")
    ]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


# ---- Prometheus text ------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


Sample = tuple[str, dict[str, str], float]


def scrape(port: int, names: list[str], timeout: float = 30) -> list[Sample]:
    query = "&".join(f"name[]={n}" for n in names)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?{query}", timeout=timeout) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


COUNTERS = [
    "trunkguard_sip_options_responses_total",
    "trunkguard_probe_failures_total",
    "trunkguard_sip_unmatched_responses_total",
    "trunkguard_sip_options_rtt_seconds_bucket",
    "trunkguard_sip_options_rtt_seconds_count",
    "trunkguard_sip_options_rtt_seconds_sum",
]


def summarize(samples: list[Sample]) -> dict[str, Any]:
    """Sum the per-trunk series into totals (per code, per reason, per bucket)."""
    s: dict[str, Any] = {
        "answered": 0.0,
        "by_code": defaultdict(float),
        "failures": defaultdict(float),
        "unmatched": defaultdict(float),
        "buckets": defaultdict(float),
        "rtt_count": 0.0,
        "rtt_sum": 0.0,
        "trunks_answered": 0,
        "per_trunk": defaultdict(float),
    }
    for name, labels, value in samples:
        if name == "trunkguard_sip_options_responses_total":
            s["answered"] += value
            s["by_code"][labels["code"]] += value
            s["trunks_answered"] += 1
            s["per_trunk"][labels["trunk"]] += value
        elif name == "trunkguard_probe_failures_total":
            s["failures"][labels["reason"]] += value
            s["per_trunk"][labels["trunk"]] += value
        elif name == "trunkguard_sip_unmatched_responses_total":
            s["unmatched"][labels["reason"]] += value
        elif name == "trunkguard_sip_options_rtt_seconds_bucket":
            s["buckets"][float(labels["le"])] += value
        elif name == "trunkguard_sip_options_rtt_seconds_count":
            s["rtt_count"] += value
        elif name == "trunkguard_sip_options_rtt_seconds_sum":
            s["rtt_sum"] += value
    return s


def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b.get(k, 0.0) - a.get(k, 0.0) for k in sorted({*a, *b}, key=str)}


def bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    """Quantile from cumulative bucket counts, linear within a bucket (like histogram_quantile)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return prev_le
            width = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / width if width else 1)
        prev_le, prev_count = le, count
    return prev_le


# ---- the agent --------------------------------------------------------------------------


def write_config(tmp: Path, trunks: int, kam_port: int, metrics_port: int) -> Path:
    lines = [
        "site: bench",
        "node: scale",
        "log_level: warning",
        f"state_dir: {tmp / 'state'}",
        f"control: {{socket: {tmp / 'ctl' / 'control.sock'}}}",
        f'metrics: {{listen: "127.0.0.1:{metrics_port}"}}',
        "probe: {interval: 1s, fast_interval: 1s, timeout: 500ms, rise: 1, fall: 1}",
        "trunks:",
    ]
    lines += [f'  t{i:05d}: {{uri: "sip:t{i:05d}@127.0.0.1:{kam_port}"}}' for i in range(trunks)]
    cfg = tmp / f"agent_{trunks}.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def measure_agent(
    tmp: Path, trunks: int, kam_port: int, kam_pids: list[int], window: float, warmup: float
) -> dict[str, Any]:
    metrics_port = free_port(socket.SOCK_STREAM)
    cfg = write_config(tmp, trunks, kam_port, metrics_port)
    log = tmp / f"agent_{trunks}.log"
    argv = [sys.executable, "-m", "trunkguard", "run", "-c", str(cfg)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        t_start = time.monotonic()
        wait_for(
            lambda: proc.poll() is not None or tcp_listening(metrics_port),
            120,
            "agent metrics listener",
            step=0.1,
        )
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited: {log.read_text()[-2000:]}")

        # Every trunk answered once, or give up waiting (an overloaded agent may never get
        # there: then the window measures it as it is, and the shortfall shows as lost).
        answered_at_start = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and answered_at_start < trunks:
            time.sleep(1.0)
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited: {log.read_text()[-2000:]}")
            s = summarize(scrape(metrics_port, ["trunkguard_sip_options_responses_total"]))
            answered_at_start = s["trunks_answered"]
        startup = time.monotonic() - t_start
        time.sleep(warmup)

        s0 = time.monotonic()
        before = summarize(scrape(metrics_port, COUNTERS))
        k0, c0, w0 = tree_cpu(kam_pids), cpu_seconds(proc.pid), time.monotonic()
        drops0 = udp_rcvbuf_errors()
        scrape_s = w0 - s0
        lags: list[float] = []
        rss: list[int] = []
        while (left := w0 + window - time.monotonic()) > 0:
            time.sleep(min(0.5, left))
            lag = scrape(metrics_port, ["trunkguard_event_loop_lag_seconds"])
            lags += [v for n, _, v in lag if n == "trunkguard_event_loop_lag_seconds"]
            rss.append(status_kb(proc.pid, "VmRSS"))
        c1, k1, w1 = cpu_seconds(proc.pid), tree_cpu(kam_pids), time.monotonic()
        drops1 = udp_rcvbuf_errors()
        hwm_kb = status_kb(proc.pid, "VmHWM")
        after = summarize(scrape(metrics_port, COUNTERS))
        s1 = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    elapsed = w1 - w0
    # Counters are read during each scrape: the counter window runs between scrape middles.
    counted_s = (w1 + s1) / 2 - (s0 + w0) / 2
    per_trunk = [
        after["per_trunk"].get(t, 0.0) - before["per_trunk"].get(t, 0.0)
        for t in (f"t{i:05d}" for i in range(trunks))
    ]
    # A trunk probed every second does at least floor(counted_s) - 1 probes in the window
    # whatever the phase; anything below that is a probe the agent itself skipped.
    floor_n = int(counted_s) - 1
    skipped = sum(max(0.0, floor_n - n) for n in per_trunk)
    answered = after["answered"] - before["answered"]
    failures = delta(before["failures"], after["failures"])
    failed = sum(failures.values())
    completed = answered + failed
    expected = trunks * counted_s
    buckets = delta(before["buckets"], after["buckets"])  # type: ignore[arg-type]
    rtt_n = after["rtt_count"] - before["rtt_count"]
    cpu = c1 - c0
    log_tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-20:]
    return {
        "trunks": trunks,
        "startup_to_all_answered_s": round(startup, 1) if answered_at_start >= trunks else None,
        "trunks_answered_before_warmup": answered_at_start,
        "window_s": round(elapsed, 2),
        "cpu_s": round(cpu, 2),
        "cpu_pct_of_one_core": round(100 * cpu / elapsed, 1),
        "peak_rss_mb": round(hwm_kb / 1024, 1),
        "rss_mb_window_max": round(max(rss) / 1024, 1),
        "probes_expected": round(expected),
        "probes_completed": round(completed),
        "probes_answered": round(answered),
        "answered_by_code": delta(before["by_code"], after["by_code"]),
        "probe_failures": round(failed),
        "probe_failures_by_reason": failures,
        "probe_deficit": round(expected - completed),
        "schedule_drift_pct": round(100 * (expected - completed) / expected, 2),
        "counter_window_s": round(counted_s, 2),
        "scrape_s": round(scrape_s, 2),
        "per_trunk_probes": {
            "min": min(per_trunk),
            "max": max(per_trunk),
            "mean": round(sum(per_trunk) / len(per_trunk), 2),
        },
        "trunks_below_floor": sum(1 for n in per_trunk if n < floor_n),
        "probes_skipped": round(skipped),
        "probes_lost": round(failed + skipped),
        "probe_rate_hz": round(completed / counted_s, 1),
        "unmatched_responses": delta(before["unmatched"], after["unmatched"]),
        "udp_rcvbuf_errors": drops1 - drops0,
        "cpu_us_per_probe": round(1e6 * cpu / completed, 1) if completed else None,
        "rtt_mean_ms": round(1000 * (after["rtt_sum"] - before["rtt_sum"]) / rtt_n, 3)
        if rtt_n
        else None,
        "rtt_p50_ms": _ms(bucket_quantile(buckets, 0.50)),
        "rtt_p99_ms": _ms(bucket_quantile(buckets, 0.99)),
        "rtt_buckets_delta": {str(k): v for k, v in buckets.items()},
        "loop_lag_ms": {
            "samples": len(lags),
            "p50": _ms(pct(lags, 50)) if lags else None,
            "p99": _ms(pct(lags, 99)) if lags else None,
            "max": _ms(max(lags)) if lags else None,
        },
        "kamailio_cpu_pct": round(100 * (k1 - k0) / elapsed, 1),
        "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
        "agent_exit_code": proc.returncode,
        "agent_log_tail": log_tail,
    }


def _ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 3)


# ---- sipp as the reference ------------------------------------------------------------


def _sipp_row(stat: Path) -> dict[str, str] | None:
    try:
        rows = list(csv.DictReader(stat.read_text(errors="replace").splitlines(), delimiter=";"))
    except OSError:
        return None
    return rows[-1] if rows else None


def measure_sipp(
    tmp: Path,
    rate: int,
    kam_ip: str,
    kam_port: int,
    kam_pids: list[int],
    window: float,
    warmup: float,
) -> dict[str, Any]:
    scen = tmp / "options_uac.xml"
    scen.write_text(SIPP_UAC)
    port = free_port()
    stat = tmp / f"sipp_{rate}_stat.csv"
    total = int(rate * (warmup + window + 10))
    argv = [
        "sipp",
        "-sf",
        str(scen),
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-r",
        str(rate),
        "-rp",
        "1000",
        "-m",
        str(total),
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(stat),
        "-fd",
        "1",
        "-trace_err",
        "-error_file",
        str(tmp / f"sipp_{rate}.err"),
        f"{kam_ip}:{kam_port}",
    ]
    log = tmp / f"sipp_{rate}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        time.sleep(warmup)
        if proc.poll() is not None:
            raise RuntimeError(f"sipp exited {proc.returncode}: {log.read_text()[-1500:]}")
        r0 = _sipp_row(stat)
        k0, c0, w0 = tree_cpu(kam_pids), cpu_seconds(proc.pid), time.monotonic()
        drops0 = udp_rcvbuf_errors()
        time.sleep(window)
        c1, k1, w1 = cpu_seconds(proc.pid), tree_cpu(kam_pids), time.monotonic()
        drops1 = udp_rcvbuf_errors()
        r1 = _sipp_row(stat)
        hwm_kb = status_kb(proc.pid, "VmHWM")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    elapsed = w1 - w0
    cpu = c1 - c0
    rate_seen = None
    failed = None
    if r0 and r1:
        dt = _secs(r1) - _secs(r0)
        succ = int(r1["SuccessfulCall(C)"]) - int(r0["SuccessfulCall(C)"])
        failed = int(r1["FailedCall(C)"]) - int(r0["FailedCall(C)"])
        rate_seen = succ / dt if dt > 0 else None
    probes = (rate_seen or rate) * elapsed
    return {
        "rate": rate,
        "window_s": round(elapsed, 2),
        "cpu_s": round(cpu, 2),
        "cpu_pct_of_one_core": round(100 * cpu / elapsed, 1),
        "peak_rss_mb": round(hwm_kb / 1024, 1),
        "answered_rate_hz": round(rate_seen, 1) if rate_seen else None,
        "failed_calls_in_window": failed,
        "udp_rcvbuf_errors": drops1 - drops0,
        "cpu_us_per_probe": round(1e6 * cpu / probes, 1) if probes else None,
        "kamailio_cpu_pct": round(100 * (k1 - k0) / elapsed, 1),
        "argv": argv,
    }


def _secs(row: dict[str, str]) -> float:
    """sipp's ElapsedTime(C) 'HH:MM:SS:mmmmmm' (or with a '.' before the fraction)."""
    parts = re.split(r"[:.]", row["ElapsedTime(C)"])
    h, m, s = (int(p) for p in parts[:3])
    frac = float("0." + parts[3]) if len(parts) > 3 else 0.0
    return h * 3600 + m * 60 + s + frac


# ---- main ---------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trunks", default="1000,10000", help="comma-separated trunk counts")
    ap.add_argument("--window", type=float, default=30.0, help="measurement window, seconds")
    ap.add_argument("--warmup", type=float, default=10.0, help="after every trunk answered once")
    ap.add_argument("--kamailio-children", type=int, default=4)
    ap.add_argument("--no-sipp", action="store_true")
    args = ap.parse_args()
    scales = [int(x) for x in args.trunks.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="probe_scale_") as d:
        tmp = Path(d)
        kam_port = free_port()
        with kamailio(tmp, udp_port=kam_port, children=args.kamailio_children) as kam:
            kam_pids = tree_pids(kam.proc.pid)
            for n in scales:
                print(
                    f"[{n} trunks] agent: starting, warm-up {args.warmup:.0f}s, "
                    f"window {args.window:.0f}s",
                    flush=True,
                )
                agent = measure_agent(tmp, n, kam_port, kam_pids, args.window, args.warmup)
                print(
                    f"[{n} trunks] agent: {agent['cpu_pct_of_one_core']}% CPU, "
                    f"{agent['probe_rate_hz']} probes/s",
                    flush=True,
                )
                ref = None
                if not args.no_sipp:
                    print(
                        f"[{n} trunks] sipp -r {n} -rp 1000: warm-up 5s, window {args.window:.0f}s",
                        flush=True,
                    )
                    ref = measure_sipp(tmp, n, kam.ip, kam_port, kam_pids, args.window, 5.0)
                rows.append({"agent": agent, "sipp": ref, **_verdict(agent, ref)})
            kam_log = [
                ln
                for ln in kam.log.read_text(errors="replace").splitlines()
                if "ERROR" in ln or "WARN" in ln
            ][-10:]

    print()
    print(
        f"{'trunks':>7} {'CPU%':>6} {'RSS MB':>7} {'probes/s':>9} {'expected':>9} {'done':>9} "
        f"{'failed':>7} {'lost':>6} {'RTT p50':>8} {'RTT p99':>8} {'lag p99':>8} {'lag max':>8} "
        f"{'us/probe':>8} {'sipp CPU%':>9} {'sipp us':>8} {'ratio':>6} {'kam CPU%':>8}"
    )
    for r in rows:
        a, s = r["agent"], r["sipp"] or {}
        print(
            f"{a['trunks']:>7} {a['cpu_pct_of_one_core']:>6} {a['peak_rss_mb']:>7} "
            f"{a['probe_rate_hz']:>9} {a['probes_expected']:>9} {a['probes_completed']:>9} "
            f"{a['probe_failures']:>7} {a['probes_lost']:>6} {_f(a['rtt_p50_ms'])} "
            f"{_f(a['rtt_p99_ms'])} {_f(a['loop_lag_ms']['p99'])} {_f(a['loop_lag_ms']['max'])} "
            f"{a['cpu_us_per_probe']!s:>8} {s.get('cpu_pct_of_one_core', '-')!s:>9} "
            f"{s.get('cpu_us_per_probe', '-')!s:>8} {r['cpu_ratio_vs_sipp']!s:>6} "
            f"{a['kamailio_cpu_pct']!s:>8}"
        )
    print(
        "(RTT in ms from the daemon's histogram buckets, interpolated; lag in ms; "
        "kam CPU% = Kamailio, all processes, during the agent window)"
    )
    for r in rows:
        a = r["agent"]
        print(
            f"{a['trunks']:>7} trunks: failures {a['probe_failures_by_reason'] or '{}'}, "
            f"unmatched {a['unmatched_responses'] or '{}'}, UDP rcvbuf drops "
            f"{a['udp_rcvbuf_errors']} (sipp run: {(r['sipp'] or {}).get('udp_rcvbuf_errors')}), "
            f"sipp kamailio CPU "
            f"{(r['sipp'] or {}).get('kamailio_cpu_pct', '-')}%, "
            f"checks {r['checks']}"
        )
    big = rows[-1]
    ok = all(big["checks"].values()) if big["agent"]["trunks"] >= 10_000 else False
    print(
        f"targets at 10,000 trunks (CPU <= 60%, RSS <= 200 MB, 0 lost, CPU/probe <= 4x sipp): "
        f"{'MET' if ok else 'NOT MET'}"
    )

    out = {
        "benchmark": "probe_scale",
        "settings": {
            "interval": "1s",
            "fast_interval": "1s",
            "timeout": "500ms",
            "rise": 1,
            "fall": 1,
            "transport": "udp",
            "window_s": args.window,
            "warmup_s": args.warmup,
            "kamailio_children": args.kamailio_children,
        },
        "targets": TARGETS,
        "targets_met": ok,
        "results": rows,
        "kamailio_log_warnings": kam_log,
        "command": " ".join([".venv/bin/python", "bench/probe_scale.py", *sys.argv[1:]]),
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "sipp": _version(["sipp", "-v"]),
            "kamailio": _version(["kamailio", "-v"]),
        },
        "date": time.strftime("%Y-%m-%d"),
    }
    write_result("probe_scale", out)
    return 0 if ok else 1


def _verdict(a: dict[str, Any], s: dict[str, Any] | None) -> dict[str, Any]:
    ratio = None
    if s and s.get("cpu_us_per_probe") and a.get("cpu_us_per_probe"):
        ratio = round(a["cpu_us_per_probe"] / s["cpu_us_per_probe"], 2)
    return {
        "cpu_ratio_vs_sipp": ratio,
        "checks": {
            "cpu": a["cpu_pct_of_one_core"] <= TARGETS["cpu_pct"],
            "rss": a["peak_rss_mb"] <= TARGETS["rss_mb"],
            "lost": a["probes_lost"] <= TARGETS["lost"],
            "vs_sipp": ratio is not None and ratio <= TARGETS["cpu_per_probe_vs_sipp"],
        },
    }


def _f(x: float | None) -> str:
    return f"{x:>8.2f}" if x is not None else f"{'-':>8}"


def _cpu_model() -> str | None:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def _version(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (out.stdout + out.stderr).strip()
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


if __name__ == "__main__":
    raise SystemExit(main())
