"""Benchmark: a million forged and garbage datagrams at the probe socket during probing.

Real peers in a namespace of our own: two sipp carriers on its loopback, the agent
(python -m trunkguard run) probing them from UDP port 5070, and a flooder sending to
that port: random bytes of random sizes from ephemeral ports, valid-looking 200 OKs
with unknown branches from the carrier's own address and port (raw sockets: what an
off-path spoofer sends), oversized datagrams, and truncated heads.

Reported: packets sent and at what rate, what the agent counted
(trunkguard_sip_unmatched_responses_total by reason) and what the kernel dropped
(Udp RcvbufErrors), the agent's RSS before and after, probes answered during the flood,
and every trunk transition (there must be none).

    sudo .venv/bin/python bench/floods.py [--packets 1000000]

Prints a table and writes bench/results/floods.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, write_result  # noqa: E402
from tests.lib import sipp  # noqa: E402
from tests.lib.agentproc import Agent  # noqa: E402
from tests.lib.netns import Netns, namespaces  # noqa: E402

PROBE_PORT = 5070
CARRIERS = {"a": 5060, "b": 5061}

FLOODER = r"""
import json, os, random, socket, struct, sys, time
n, port, carrier = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dst = ("127.0.0.1", port)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
rng = random.Random(7)
ok = ("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK%%s\r\n"
      "From: <sip:x@y>;tag=1\r\nTo: <sip:x@y>;tag=2\r\nCall-ID: %%s\r\nCSeq: 1 OPTIONS\r\n"
      "Content-Length: 0\r\n\r\n" % port)
def spoofed(payload):
    # IPv4 + UDP from the carrier's own address and port (checksum 0: none, as allowed).
    udp_h = struct.pack("!HHHH", carrier, port, 8 + len(payload), 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0,
                     socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
    return ip + udp_h + payload
kinds = {"random": 0, "spoofed_ok": 0, "oversized": 0, "truncated": 0}
big = os.urandom(60000)
start = time.monotonic()
for i in range(n):
    k = i % 10
    try:
        if k < 5:
            udp.sendto(os.urandom(rng.randint(1, 1400)), dst); kinds["random"] += 1
        elif k < 8:
            p = (ok % (os.urandom(12).hex(), os.urandom(12).hex())).encode()
            raw.sendto(spoofed(p), ("127.0.0.1", 0)); kinds["spoofed_ok"] += 1
        elif k == 8:
            udp.sendto(big, dst); kinds["oversized"] += 1
        else:
            udp.sendto(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1", dst); kinds["truncated"] += 1
    except BlockingIOError:
        pass
print(json.dumps({"sent": n, "seconds": time.monotonic() - start, "kinds": kinds}))
"""

SCRAPE = r"""
import sys, urllib.request
print(urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=10).read().decode())
"""


def config(tmp: Path) -> Path:
    trunks = "".join(f'  {n}: {{uri: "sip:127.0.0.1:{p}"}}\n' for n, p in CARRIERS.items())
    cfg = tmp / "trunkguard.yaml"
    cfg.write_text(
        f"site: lab\nnode: flood\ncontrol: {{socket: {tmp}/control.sock}}\n"
        f'metrics: {{listen: "127.0.0.1:9464"}}\nsip: {{source_port: {PROBE_PORT}}}\n'
        f"trunks:\n{trunks}routes:\n  out:\n    paths:\n"
        "      - {name: a, requires: [trunk:a]}\n      - {name: b, requires: [trunk:b]}\n"
    )
    return cfg


def metric(ns: Netns, name: str) -> dict[str, float]:
    text = ns.sh(sys.executable, "-c", SCRAPE).stdout
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def rcvbuf_errors(ns: Netns) -> int:
    lines = [x.split() for x in ns.sh("cat", "/proc/net/snmp").stdout.splitlines()]
    head, values = [x for x in lines if x[0] == "Udp:"][:2]
    return int(values[head.index("RcvbufErrors")])


def rss_kb(pid: int) -> dict[str, int]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, namespaces("fl") as (ns,):
        tmp = Path(d)
        with (
            sipp.options_responder(tmp, "127.0.0.1", CARRIERS["a"], netns=ns.name),
            sipp.options_responder(tmp, "127.0.0.1", CARRIERS["b"], netns=ns.name),
        ):
            agent = Agent(config(tmp), netns=ns.name)
            try:
                agent.wait_for(agent.applied("a"), 15, "initial route")
                time.sleep(5)  # settle: RSS after start-up, GC frozen (not a sync)
                pid = agent.proc.pid
                before = rss_kb(pid)
                un0 = metric(ns, "trunkguard_sip_unmatched_responses_total")
                ok0 = metric(ns, "trunkguard_sip_options_responses_total")
                drops0 = rcvbuf_errors(ns)
                own0 = metric(ns, "trunkguard_sip_socket_drops_total")
                mark = agent.mark()
                flood = ns.sh(
                    sys.executable,
                    "-c",
                    FLOODER,
                    str(args.packets),
                    str(PROBE_PORT),
                    str(CARRIERS["a"]),
                )
                sent = json.loads(flood.stdout.strip().splitlines()[-1])
                time.sleep(6)  # the agent drains, then polls its drop counter (every 5 s)
                after = rss_kb(pid)
                un1 = metric(ns, "trunkguard_sip_unmatched_responses_total")
                ok1 = metric(ns, "trunkguard_sip_options_responses_total")
                drops = rcvbuf_errors(ns) - drops0
                own1 = metric(ns, "trunkguard_sip_socket_drops_total")
                agent.drain()
                transitions = [
                    e for e in agent.events[mark:] if e.get("event") == "target transition"
                ]
                alive = agent.proc.poll() is None
            finally:
                agent.stop()
    counted = {k.split('reason="')[1].rstrip('"}'): v - un0.get(k, 0) for k, v in un1.items()}
    answered = sum(ok1.values()) - sum(ok0.values())
    total_counted = sum(counted.values())
    rate = sent["sent"] / sent["seconds"]
    print(
        f"sent {sent['sent']:,} datagrams in {sent['seconds']:.1f}s ({rate:,.0f}/s): "
        f"{sent['kinds']}"
    )
    print(f"counted by the agent (unmatched by reason): {counted}")
    own = sum(own1.values()) - sum(own0.values())
    print(f"dropped by the kernel (socket buffer full): {drops:,}; the agent counted {own:,.0f}")
    print(
        f"accounted for: {total_counted + drops:,.0f} of {sent['sent']:,} "
        f"({100 * (total_counted + drops) / sent['sent']:.2f} %)"
    )
    print(f"probe answers during the flood: {answered:.0f}; trunk transitions: {len(transitions)}")
    print(
        f"agent RSS before {before['VmRSS'] / 1024:.1f} MB, after {after['VmRSS'] / 1024:.1f} MB"
        f" (peak {after['VmHWM'] / 1024:.1f} MB); alive: {alive}"
    )
    ok = alive and not transitions and answered > 0 and after["VmRSS"] < before["VmRSS"] + 20_000
    print(
        "targets (alive, no transition, probing goes on, RSS +< 20 MB): "
        f"{'MET' if ok else 'NOT MET'}"
    )
    write_result(
        "floods",
        {
            "benchmark": "floods",
            "sent": sent,
            "rate_per_s": rate,
            "counted_unmatched": counted,
            "kernel_rcvbuf_drops": drops,
            "agent_counted_socket_drops": own,
            "accounted_percent": 100 * (total_counted + drops) / sent["sent"],
            "probe_answers_during": answered,
            "transitions": transitions,
            "rss_kb_before": before,
            "rss_kb_after": after,
            "alive": alive,
            "targets_met": ok,
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d"),
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
