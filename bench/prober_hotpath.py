"""Micro-benchmark: CPU per probe of UdpProber's hot path, before and after.

"before" is agent/trunkguard/sip/prober.py (and the sip/message.py it used) as committed at
--before-rev (HEAD), copied from `git show REV:...` into a temporary directory and imported as
separate modules; "after" is the working tree. Both answer to the same responder:
agent.sip.uas.OptionsResponder on 127.0.0.1, answering 200 OK.

Each run sends --probes OPTIONS (default 20,000) in batches of --inflight (2,000) over
--trunks distinct Request-URIs (sip:tNNNNN@127.0.0.1:port, as the daemon does), after
one warm-up batch, and reads time.process_time() around the measured batches.

Two layouts:
  inproc      the responder runs in this process and event loop (as in a one-process
              demo); its CPU is measured separately by a responder-only baseline: the
              same datagrams sent by a raw socket client that does not parse answers.
  subprocess  the responder runs in a forked child with its own loop, so this
              process's CPU is the prober's alone (plus the benchmark driver); the
              child's CPU per request is reported too.

Modes: "before probe()" and "after probe()" (one task per probe, what the daemon's
scheduler does today), "after send()" (callback API, no task or future per probe).

    .venv/bin/python bench/prober_hotpath.py [--probes 20000] [--inflight 2000]
        [--trunks 2000] [--repeat 3] [--layout inproc,subprocess] [--before-rev HEAD]

Prints a table and writes bench/results/prober_hotpath.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import multiprocessing
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trunkguard.core.events import ProbeOutcome  # noqa: E402
from trunkguard.sip import prober as after_module  # noqa: E402
from trunkguard.sip.uas import OptionsResponder  # noqa: E402

RCVBUF = 4 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def big_rcvbuf(sock: socket.socket) -> None:
    for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, RCVBUF)
            return


def git(*argv: str) -> str:
    return subprocess.run(
        ["git", *argv], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def load_before(tmp: Path, rev: str) -> ModuleType:
    """rev's prober.py, importing rev's message.py, as modules of their own."""

    def show(path: str) -> str:
        return git("show", f"{rev}:{path}")

    (tmp / "tg_before_message.py").write_text(show("agent/trunkguard/sip/message.py"))
    source = show("agent/trunkguard/sip/prober.py")
    patched = source.replace("from trunkguard.sip.message import", "from tg_before_message import")
    if patched == source:
        raise SystemExit(f"{rev}'s prober.py does not import trunkguard.sip.message: update bench")
    (tmp / "tg_before_prober.py").write_text(patched)
    sys.path.insert(0, str(tmp))
    module: ModuleType | None = None
    for name in ("tg_before_message", "tg_before_prober"):
        spec = importlib.util.spec_from_file_location(name, tmp / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while building
        spec.loader.exec_module(module)
    assert module is not None
    return module


class Prober(Protocol):
    _socks: dict[int, socket.socket]

    def probe(
        self, host: str, port: int, *, request_uri: str, timeout: float
    ) -> Awaitable[ProbeOutcome]: ...

    def close(self) -> None: ...


# --- the responder, here or in a child process ---------------------------------------------


class Responder(Protocol):
    port: int

    def requests(self) -> int: ...
    def cpu_start(self) -> None: ...
    def cpu_stop(self) -> float | None: ...  # seconds, if measured in another process
    def close(self) -> None: ...


class InprocResponder:
    def __init__(self, proto: OptionsResponder) -> None:
        self.proto, self.port = proto, proto.port

    @classmethod
    async def start(cls) -> InprocResponder:
        proto = await OptionsResponder.start("127.0.0.1", 0)
        big_rcvbuf(proto._transport.get_extra_info("socket"))  # type: ignore[union-attr]
        return cls(proto)

    def requests(self) -> int:
        return self.proto.requests

    def cpu_start(self) -> None:
        pass

    def cpu_stop(self) -> float | None:
        return None

    def close(self) -> None:
        self.proto.close()


def _child(conn: Connection) -> None:
    async def main() -> None:
        proto = await OptionsResponder.start("127.0.0.1", 0)
        big_rcvbuf(proto._transport.get_extra_info("socket"))  # type: ignore[union-attr]
        conn.send(proto.port)
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        mark = 0.0

        def command() -> None:
            nonlocal mark
            what = conn.recv()
            if what == "start":
                mark = time.process_time()
                conn.send(None)
            elif what == "stop":
                conn.send(time.process_time() - mark)
            elif what == "requests":
                conn.send(proto.requests)
            else:
                done.set()

        loop.add_reader(conn.fileno(), command)
        await done.wait()
        proto.close()

    asyncio.run(main())


class ChildResponder:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(child,), daemon=True)
        self.proc.start()
        self.port = int(self.conn.recv())

    def _ask(self, what: str) -> Any:
        self.conn.send(what)
        return self.conn.recv()

    def requests(self) -> int:
        return int(self._ask("requests"))

    def cpu_start(self) -> None:
        self._ask("start")

    def cpu_stop(self) -> float | None:
        return float(self._ask("stop"))

    def close(self) -> None:
        self.conn.send("quit")
        self.proc.join(5)


@contextlib.contextmanager
def child_responder() -> Iterator[ChildResponder]:
    r = ChildResponder()
    try:
        yield r
    finally:
        r.close()


# --- drivers -------------------------------------------------------------------------------


@dataclass
class Run:
    cpu: float = 0.0  # this process, seconds
    responder_cpu: float | None = None  # the child's, seconds
    wall: float = 0.0
    probes: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    retransmits: int = 0


async def drive_tasks(
    prober: Prober, port: int, uris: list[str], count: int, inflight: int, outcomes: Counter[str]
) -> None:
    """One task per probe, as a scheduler built on probe() does."""
    for first in range(0, count, inflight):
        tasks = [
            asyncio.ensure_future(
                prober.probe("127.0.0.1", port, timeout=2.0, request_uri=uris[i % len(uris)])
            )
            for i in range(first, min(first + inflight, count))
        ]
        for out in await asyncio.gather(*tasks):
            outcomes[out.reason] += 1


class Batch:
    """Counts one batch's outcomes; done when all have arrived."""

    def __init__(self, size: int, outcomes: Counter[str]) -> None:
        self.left, self.outcomes = size, outcomes
        self.done = asyncio.get_running_loop().create_future()

    def on_done(self, out: ProbeOutcome) -> None:
        self.outcomes[out.reason] += 1
        self.left -= 1
        if self.left == 0:
            self.done.set_result(None)


async def drive_send(
    prober: after_module.UdpProber,
    port: int,
    uris: list[str],
    count: int,
    inflight: int,
    outcomes: Counter[str],
) -> None:
    """The callback API: no task and no future per probe."""
    send = prober.send
    for first in range(0, count, inflight):
        last = min(first + inflight, count)
        batch = Batch(last - first, outcomes)
        for i in range(first, last):
            send(
                "127.0.0.1",
                port,
                request_uri=uris[i % len(uris)],
                timeout=2.0,
                on_done=batch.on_done,
            )
        await batch.done


Driver = Callable[[Any, int, list[str], int, int, Counter[str]], Awaitable[None]]


async def measure(
    make: Callable[[], Prober], driver: Driver, responder: Responder, args: argparse.Namespace
) -> Run:
    uris = [f"sip:t{i:05d}@127.0.0.1:{responder.port}" for i in range(args.trunks)]
    prober = make()
    run = Run(probes=args.probes)
    try:
        warm: Counter[str] = Counter()
        await driver(prober, responder.port, uris, args.inflight, args.inflight, warm)
        for sock in prober._socks.values():  # the same room for bursts, before and after
            big_rcvbuf(sock)
        before_requests = responder.requests()
        responder.cpu_start()
        wall, cpu = time.perf_counter(), time.process_time()
        await driver(prober, responder.port, uris, args.probes, args.inflight, run.outcomes)
        run.cpu = time.process_time() - cpu
        run.wall = time.perf_counter() - wall
        run.responder_cpu = responder.cpu_stop()
        run.retransmits = responder.requests() - before_requests - args.probes
    finally:
        prober.close()
    return run


async def raw_client(responder: Responder, args: argparse.Namespace) -> Run:
    """Responder-only baseline: pre-built requests from a bare socket, answers only counted."""
    template = (
        "OPTIONS sip:t{i:05d}@127.0.0.1:{port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:{me};rport;branch=z9hG4bK{i:024x}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:trunkguard@127.0.0.1>;tag={i:016x}\r\n"
        "To: <sip:t{i:05d}@127.0.0.1:{port}>\r\nCall-ID: {i:024x}@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\nContact: <sip:trunkguard@127.0.0.1:{me}>\r\n"
        "Accept: application/sdp\r\nUser-Agent: trunkguard/bench\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    big_rcvbuf(sock)
    sock.bind(("127.0.0.1", 0))
    me = sock.getsockname()[1]
    dest = ("127.0.0.1", responder.port)
    requests = [
        template.format(i=i, port=responder.port, me=me).encode() for i in range(args.probes)
    ]
    run = Run(probes=args.probes)
    got = 0
    waiter: asyncio.Future[None] | None = None
    target = 0

    def readable() -> None:
        nonlocal got
        while True:
            try:
                sock.recv(65536)
            except BlockingIOError:
                break
            got += 1
        if waiter is not None and not waiter.done() and got >= target:
            waiter.set_result(None)

    loop.add_reader(sock.fileno(), readable)
    try:
        responder.cpu_start()
        wall, cpu = time.perf_counter(), time.process_time()
        for first in range(0, args.probes, args.inflight):
            target = min(first + args.inflight, args.probes)
            waiter = loop.create_future()
            for i in range(first, target):
                sock.sendto(requests[i], dest)
            await asyncio.wait_for(waiter, 5)
        run.cpu = time.process_time() - cpu
        run.wall = time.perf_counter() - wall
        run.responder_cpu = responder.cpu_stop()
        run.outcomes["response"] = got
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
    return run


# --- main ----------------------------------------------------------------------------------


def us(seconds: float | None, n: int) -> float | None:
    return None if seconds is None else round(seconds / n * 1e6, 2)


async def layout_runs(
    layout: str, before: ModuleType, args: argparse.Namespace
) -> dict[str, list[Run]]:
    def make_before() -> Prober:
        return before.UdpProber(user_agent="trunkguard/bench")  # type: ignore[no-any-return]

    def make_after() -> Prober:
        return after_module.UdpProber(user_agent="trunkguard/bench")

    modes: dict[str, tuple[Callable[[], Prober], Driver]] = {
        "before probe()": (make_before, drive_tasks),
        "after probe()": (make_after, drive_tasks),
        "after send()": (make_after, drive_send),  # type: ignore[dict-item]
    }
    runs: dict[str, list[Run]] = {name: [] for name in [*modes, "responder only"]}
    with contextlib.ExitStack() as stack:
        responder: Responder
        if layout == "subprocess":
            responder = stack.enter_context(child_responder())
        else:
            responder = await InprocResponder.start()
            stack.callback(responder.close)
        for _ in range(args.repeat):  # interleaved, so drift hits every mode alike
            for name, (make, driver) in modes.items():
                runs[name].append(await measure(make, driver, responder, args))
            runs["responder only"].append(await raw_client(responder, args))
    return runs


def summarise(runs: list[Run]) -> dict[str, Any]:
    n = runs[0].probes
    cpu = statistics.median(r.cpu for r in runs)
    resp = [r.responder_cpu for r in runs if r.responder_cpu is not None]
    outcomes: Counter[str] = Counter()
    for r in runs:
        outcomes.update(r.outcomes)
    return {
        "cpu_us_per_probe": us(cpu, n),
        "cpu_us_per_probe_runs": [us(r.cpu, n) for r in runs],
        "responder_cpu_us_per_probe": us(statistics.median(resp), n) if resp else None,
        "wall_s": round(statistics.median(r.wall for r in runs), 3),
        "probes_per_run": n,
        "outcomes": dict(outcomes),
        "retransmits": sum(r.retransmits for r in runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=20_000)
    ap.add_argument("--inflight", type=int, default=2_000)
    ap.add_argument("--trunks", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--layout", default="inproc,subprocess")
    ap.add_argument(
        "--before-rev",
        default="HEAD",
        help="git revision whose agent/trunkguard/sip/prober.py is 'before' (default HEAD; "
        "once this work is committed, pass the commit before it)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/prober_hotpath.json")
    args = ap.parse_args()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tg-before-") as tmp:
        before = load_before(Path(tmp), args.before_rev)
        for layout in args.layout.split(","):
            runs = asyncio.run(layout_runs(layout, before, args))
            results[layout] = {name: summarise(r) for name, r in runs.items()}

    for layout, table in results.items():
        print(
            f"\n{layout}: µs of CPU per probe (median of {args.repeat} runs of "
            f"{args.probes} probes, {args.inflight} in flight)"
        )
        base = table["responder only"]
        print(
            f"  {'mode':<16} {'this process':>12} {'minus resp.':>12} {'responder':>10} "
            f"{'wall s':>7}  outcomes"
        )
        for name, row in table.items():
            mine = row["cpu_us_per_probe"]
            resp = row["responder_cpu_us_per_probe"]
            net = (
                ""
                if layout == "subprocess" or name == "responder only"
                else (f"{mine - base['cpu_us_per_probe']:.2f}")
            )
            print(
                f"  {name:<16} {mine:>12.2f} {net:>12} {'' if resp is None else resp:>10} "
                f"{row['wall_s']:>7}  {row['outcomes']} retx={row['retransmits']}"
            )
        b, a, s = (
            table[m]["cpu_us_per_probe"]
            for m in ("before probe()", "after probe()", "after send()")
        )
        print(f"  speed-up: probe() {b / a:.2f}x, send() {b / s:.2f}x")

    doc = {
        "benchmark": "prober_hotpath",
        "settings": vars(args) | {"out": str(args.out)},
        "notes": {
            "inproc": "responder in the same process; 'responder only' is the same responder "
            "driven by a raw socket that does not parse answers, so "
            "'minus resp.' = this process - responder only = the prober's share "
            "above a bare sendto/recv client",
            "subprocess": "responder forked into its own process: this process's CPU is the "
            "prober and the benchmark driver only; responder CPU reported apart",
            "before": f"git show {args.before_rev}:agent/trunkguard/sip/prober.py + .../message.py",
            "before_commit": git("rev-parse", args.before_rev).strip(),
        },
        "results": results,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": multiprocessing.cpu_count(),
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
