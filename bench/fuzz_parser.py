"""Fuzz run: the network-facing SIP parsers and the operator-facing URI parser.

Coverage-guided (atheris / libFuzzer) over three targets, each in its own
libFuzzer process (atheris.Setup/Fuzz own the process and never return):

    response  agent.sip.message.parse_response  must never raise
    request   agent.sip.message.parse_request   must never raise
    uri       agent.sip.uri.parse_uri           may raise ValueError only

The parent runs `python bench/fuzz_parser.py --target NAME ...` for each target,
reads libFuzzer's final stats from stderr, prints a table and writes
bench/results/fuzz_parser.json. Any crash (uncaught exception, wrong result type)
or hang (-timeout) fails the run; the reproducer is kept under the work dir.

    .venv/bin/python bench/fuzz_parser.py [--runs 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("response", "request", "uri")
MAX_LEN = {"response": 4096, "request": 4096, "uri": 512}

# A small seed corpus of valid messages (plus a few edge cases), CRLF line ends.
_RESP_200 = (
    "SIP/2.0 200 OK\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:40000;rport=40000;branch=z9hG4bK5a1b2c3d4e5f60718293a4b5;"
    "received=127.0.0.1\r\n"
    "From: <sip:trunkguard@127.0.0.1>;tag=1a2b3c4d5e6f7081\r\n"
    "To: <sip:t00042@127.0.0.1:5060>;tag=as0b1c2d3e\r\n"
    "Call-ID: 0f1e2d3c4b5a69788796a5b4@127.0.0.1\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Accept: application/sdp\r\n"
    "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE\r\n"
    "Server: kamailio (5.6.3 (x86_64/linux))\r\n"
    "Content-Length: 0\r\n\r\n"
)
_RESP_503 = (
    "SIP/2.0 503 Service Unavailable\n"
    "v: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKabc, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\n"
    'f: "Trunk, Guard" <sip:tg@[2001:db8::1]>;tag=77\n'
    "t: <sip:carrier.example.com>\n"
    "i: abc@[2001:db8::1]\n"
    "CSeq: 1 OPTIONS\n"
    "Retry-After: 120 (maintenance);duration=3600\n"
    "Subject: folded\n  continuation line\n"
    "l: 0\n\n"
)
_RESP_100 = (
    "SIP/2.0 100 Trying\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    "Call-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n"
)
_REQ_OPTIONS = (
    "OPTIONS sip:t00042@127.0.0.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bK5a1b2c3d4e5f60718293a4b5\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:trunkguard@127.0.0.1>;tag=1a2b3c4d5e6f7081\r\n"
    "To: <sip:t00042@127.0.0.1:5060>\r\n"
    "Call-ID: 0f1e2d3c4b5a69788796a5b4@127.0.0.1\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Contact: <sip:trunkguard@127.0.0.1:40000>\r\n"
    "Accept: application/sdp\r\n"
    "User-Agent: trunkguard/0.1.0\r\n"
    "Content-Length: 0\r\n\r\n"
)
_REQ_INVITE = (
    "INVITE sips:alice@[2001:db8::5]:5061;transport=tls SIP/2.0\n"
    "v: SIP/2.0/TLS h.example;branch=z9hG4bKq;received=192.0.2.9\n"
    'f: sip:bob@example.com;tag=9\nt: "A, B" <sip:alice@example.com>\n'
    "i: 1@h\nCSeq: 4711 INVITE\nc: application/sdp\nl: 4\n\nv=0\n"
)
SEEDS: dict[str, list[bytes]] = {
    "response": [s.encode() for s in (_RESP_200, _RESP_503, _RESP_100, _REQ_OPTIONS)],
    "request": [s.encode() for s in (_REQ_OPTIONS, _REQ_INVITE, _RESP_200)],
    "uri": [
        s.encode()
        for s in (
            "sip:t00042@127.0.0.1:5060",
            "sip:carrier-a.example.com;transport=udp",
            "sips:[2001:db8::1]:5061;transport=tcp;lr",
            "SIP:user:pw@Host.Example.:65535;maddr=10.0.0.1;x=%41b",
            "sip:+4930123%23;phone=1@gw.example.net",
            "sip:[::ffff:192.0.2.1]",
        )
    ],
}


# ---- child: one libFuzzer run over one target ------------------------------------------


def _child(target: str, libfuzzer_args: list[str]) -> None:
    import atheris

    atheris.enabled_hooks.add("RegEx")  # feed re pattern matches to libFuzzer's comparisons
    atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=["trunkguard"]):
        from trunkguard.sip.message import SipRequest, SipResponse, parse_request, parse_response
        from trunkguard.sip.uri import SipUri, parse_uri

    def one_response(data: bytes) -> None:
        r = parse_response(data)
        if r is not None and not (isinstance(r, SipResponse) and 100 <= r.code <= 699):
            raise AssertionError(f"parse_response returned {r!r}")

    def one_request(data: bytes) -> None:
        r = parse_request(data)
        if r is not None and not isinstance(r, SipRequest):
            raise AssertionError(f"parse_request returned {r!r}")

    def one_uri(data: bytes) -> None:
        text = data.decode("utf-8", "surrogateescape")  # seeds stay readable; any code point
        try:
            u = parse_uri(text)
        except ValueError:
            return
        if not isinstance(u, SipUri):
            raise AssertionError(f"parse_uri returned {u!r}")

    fn = {"response": one_response, "request": one_request, "uri": one_uri}[target]
    atheris.Setup([sys.argv[0], *libfuzzer_args], fn)
    atheris.Fuzz()


# ---- parent: run every target, aggregate --------------------------------------------------


_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_STAT = re.compile(r"stat::(\w+):\s+(\d+)")
_COV = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)")


def _run_target(target: str, runs: int, work: Path, timeout_s: int) -> dict[str, object]:
    corpus = work / f"corpus_{target}"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(SEEDS[target]):
        (corpus / f"seed{i}").write_bytes(seed)
    artifacts = work / f"artifacts_{target}"
    artifacts.mkdir(exist_ok=True)
    args = [
        f"-runs={runs}",
        f"-max_len={MAX_LEN[target]}",
        f"-timeout={timeout_s}",
        "-print_final_stats=1",
        "-seed=1",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    argv = [sys.executable, __file__, "--target", target, "--", *args]
    print(f"[{target}] {' '.join(argv[1:])}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
    wall = time.monotonic() - t0
    err = proc.stderr
    (work / f"{target}.log").write_text(err)
    done = _DONE.search(err)
    stats = {k: int(v) for k, v in _STAT.findall(err)}
    cov = _COV.findall(err)
    last = cov[-1] if cov else None
    crashes = sorted(p.name for p in artifacts.iterdir())
    executed = stats.get("number_of_executed_units", int(done.group(1)) if done else 0)
    return {
        "target": target,
        "function": {
            "response": "trunkguard.sip.message.parse_response",
            "request": "trunkguard.sip.message.parse_request",
            "uri": "trunkguard.sip.uri.parse_uri",
        }[target],
        "contract": "may raise ValueError only" if target == "uri" else "never raises",
        "executions": executed,
        "libfuzzer_done_line": done.group(0) if done else None,
        "wall_s": round(wall, 2),
        "exec_per_s": round(executed / wall) if wall else 0,
        "libfuzzer_avg_exec_per_s": stats.get("average_exec_per_sec"),
        "coverage_edges": int(last[1]) if last else None,
        "features": int(last[2]) if last else None,
        "corpus_units": int(last[3]) if last else None,
        "new_units_added": stats.get("new_units_added"),
        "peak_rss_mb": stats.get("peak_rss_mb"),
        "exit_code": proc.returncode,
        "crashes": len(crashes) + (0 if proc.returncode == 0 or crashes else 1),
        "crash_files": [str(artifacts / c) for c in crashes],
        "crash_excerpt": None if proc.returncode == 0 else err[-3000:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", choices=TARGETS, help="(internal) fuzz one target in-process")
    ap.add_argument("--runs", type=int, default=1_000_000, help="libFuzzer -runs per target")
    ap.add_argument("--timeout", type=int, default=10, help="libFuzzer -timeout (hang) seconds")
    ap.add_argument("--keep", type=Path, help="keep corpora and logs in this directory")
    ap.add_argument("rest", nargs="*", help="(internal) libFuzzer arguments")
    args = ap.parse_args()
    if args.target:
        sys.path.insert(0, str(ROOT))
        _child(args.target, args.rest)
        return 0

    work = args.keep or Path(tempfile.mkdtemp(prefix="fuzz_parser_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    rows = [_run_target(t, args.runs, work, args.timeout) for t in TARGETS]
    wall = time.monotonic() - t0
    total = sum(int(r["executions"]) for r in rows)  # type: ignore[call-overload]
    crashes = sum(int(r["crashes"]) for r in rows)  # type: ignore[call-overload]

    print()
    head = f"{'target':<9} {'function':<34} {'execs':>9} {'wall s':>7} {'exec/s':>7} "
    print(head + f"{'cov':>5} {'ft':>6} {'corpus':>6} {'crashes':>7}")
    for r in rows:
        print(
            f"{r['target']:<9} {r['function']:<34} {r['executions']:>9} {r['wall_s']:>7} "
            f"{r['exec_per_s']:>7} {r['coverage_edges']!s:>5} {r['features']!s:>6} "
            f"{r['corpus_units']!s:>6} {r['crashes']:>7}"
        )
    print(
        f"{'total':<9} {'':<34} {total:>9} {wall:>7.1f} {total / wall:>7.0f} {'':>20} {crashes:>7}"
    )
    ok = crashes == 0 and total >= 1_000_000
    print(f"targets: >= 1,000,000 executions, 0 crashes: {'MET' if ok else 'NOT MET'}")
    for r in rows:
        if r["crash_excerpt"]:
            print(f"\n--- {r['target']} (exit {r['exit_code']}) ---\n{r['crash_excerpt']}")

    import atheris

    out = {
        "benchmark": "fuzz_parser",
        "engine": f"atheris {getattr(atheris, '__version__', '3.0')} (libFuzzer), "
        "instrument_imports(agent), RegEx+str hooks",
        "total_executions": total,
        "total_wall_s": round(wall, 1),
        "total_crashes": crashes,
        "targets_met": ok,
        "runs_per_target": args.runs,
        "targets": rows,
        "seeds_per_target": {t: len(s) for t, s in SEEDS.items()},
        "command": f".venv/bin/python bench/fuzz_parser.py --runs {args.runs}",
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "date": time.strftime("%Y-%m-%d"),
    }
    res = ROOT / "bench/results/fuzz_parser.json"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {res.relative_to(ROOT)}; work dir {work}")
    if not args.keep and crashes == 0:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


if __name__ == "__main__":
    raise SystemExit(main())
