"""`trunkguard lab`: two simulated carriers on loopback, an outage, and the timeline.

Runs the real daemon (same config loader, prober, core and command actuator) with
no root and no change to the host: the "routing" it switches is a file written
by the command actuator.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from trunkguard.app import App
from trunkguard.config import parse_config
from trunkguard.core.events import Decision, ProbeOutcome, Transition, Verdict
from trunkguard.core.health import HealthParams, detection_bound
from trunkguard.core.ids import TargetId, trunk
from trunkguard.hub import Hub
from trunkguard.sinks.latency import Applied
from trunkguard.sip.uas import OptionsResponder

INTERVAL, FAST, TIMEOUT, FALL, RISE = 1.0, 0.2, 0.5, 3, 2

CONFIG = """\
site: lab
node: demo
log_level: error
state_dir: {tmp}/state
control: {{socket: {tmp}/control.sock}}
metrics: null
probe: {{interval: 1s, fast_interval: 200ms, timeout: 500ms, rise: {rise}, fall: {fall}}}
trunks:
  carrier-a: {{uri: "sip:127.0.0.1:{port_a}"}}
  carrier-b: {{uri: "sip:127.0.0.1:{port_b}"}}
routes:
  outbound:
    failback: auto
    hold: {hold}ms
    paths:
      - name: carrier-a
        requires: [trunk:carrier-a]
        actions:
          command: {{argv: ["{py}", "-c", "{write}", "{tmp}/active-route"]}}
      - name: carrier-b
        requires: [trunk:carrier-b]
        actions:
          command: {{argv: ["{py}", "-c", "{write}", "{tmp}/active-route"]}}
"""
WRITE = "import os,sys; open(sys.argv[1],'w').write(os.environ['TRUNKGUARD_PATH'])"


class _Timeline:
    """The lab's view of the daemon: probes of carrier A and every event, as rows."""

    A = trunk("carrier-a")

    def __init__(self) -> None:
        self.rows: list[tuple[float, str]] = []
        self.applied: list[Applied] = []
        self.good = 0
        self.changed = asyncio.Event()
        self.last_good_a: tuple[float, str] | None = None
        self.first_fail_a: tuple[float, str] | None = None
        self.outage_at: float | None = None

    def attach(self, hub: Hub) -> None:
        hub.on_probe = self.probe
        hub.subscribe(Transition, self.transition)
        hub.subscribe(Decision, self.decision)
        hub.subscribe(Applied, self.on_applied)

    def probe(self, target: TargetId, dest: str, o: ProbeOutcome, v: Verdict) -> None:
        self.good += v.ok
        if target == self.A:
            if v.ok and self.outage_at is None:
                rtt = f"{o.rtt * 1000:.2f} ms" if o.rtt is not None else ""
                self.last_good_a = (o.at, f"last good probe of carrier-a ({v.reason}, {rtt})")
            elif not v.ok and self.outage_at is not None and self.first_fail_a is None:
                self.first_fail_a = (o.at, f"first failed probe of carrier-a: {v.reason}")
        self.changed.set()

    def transition(self, t: Transition) -> None:
        self.rows.append((t.at, f"{t.target} {t.old} -> {t.new}: {t.reason}"))
        self.changed.set()

    def decision(self, d: Decision) -> None:
        old = "-" if d.old is None else str(d.old)
        self.rows.append((d.at, f"route {d.group}: {old} -> {d.new} ({d.kind}: {d.reason})"))
        self.changed.set()

    def on_applied(self, a: Applied) -> None:
        self.applied.append(a)
        what = f"route {a.group} applied: {a.paths} (decision to applied {a.apply_s * 1000:.1f} ms)"
        self.rows.append((a.at, what))
        self.changed.set()

    async def until(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        async def wait() -> None:
            while not pred():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise RuntimeError(f"lab: timed out waiting for {what}") from None

    def is_applied(self, path: str, after: float = 0.0) -> bool:
        return any(str(a.paths) == path and a.at >= after for a in self.applied)


def _read(path: Path) -> str:
    return path.read_text()


def _say(msg: str) -> None:
    print(msg, flush=True)


async def _script(
    tl: _Timeline, a: OptionsResponder, outage: float, hold: float, worst: float, route_file: Path
) -> float:
    """The scripted outage and recovery of carrier A; returns when A came back."""
    await tl.until(lambda: tl.is_applied("carrier-a"), 10, "the initial route")
    _say("route outbound -> carrier-a (initial); waiting for two good probes")
    goods = tl.good
    await tl.until(lambda: tl.good >= goods + 4, 10, "steady probes")
    await asyncio.sleep(0.4 * INTERVAL)  # scripted: the outage starts mid-interval
    tl.outage_at = time.monotonic()
    a.silent = True
    _say("OUTAGE: carrier-a stops answering")
    failed_over = lambda: tl.is_applied("carrier-b", tl.outage_at or 0.0)  # noqa: E731
    await tl.until(failed_over, 2 * worst + 5, "failover to carrier-b")
    _say(f"routing file says: {_read(route_file)}")
    await asyncio.sleep(max(0.0, tl.outage_at + outage - time.monotonic()))  # scripted outage
    recovered = time.monotonic()
    a.silent = False
    _say("RECOVERY: carrier-a answers again")
    await tl.until(lambda: tl.is_applied("carrier-a", recovered), hold + 10, "failback")
    _say(f"routing file says: {_read(route_file)}")
    return recovered


async def run_lab(hold: float = 3.0, outage: float = 4.0) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="trunkguard-lab-"))
    a = await OptionsResponder.start("127.0.0.1", 0)
    b = await OptionsResponder.start("127.0.0.1", 0)
    tl = _Timeline()
    text = CONFIG.format(
        tmp=tmp,
        port_a=a.port,
        port_b=b.port,
        hold=int(hold * 1000),
        rise=RISE,
        fall=FALL,
        py=sys.executable,
        write=WRITE,
    )
    (tmp / "trunkguard.yaml").write_text(text)
    app = App(str(tmp / "trunkguard.yaml"), parse_config(text), json_logs=False, attach=tl.attach)
    task = asyncio.create_task(app.run())
    worst = detection_bound(HealthParams(INTERVAL, FAST, RISE, FALL), TIMEOUT)
    try:
        _say(f"trunkguard lab: carrier-a on 127.0.0.1:{a.port}, carrier-b on 127.0.0.1:{b.port}")
        _say(
            f"probing every {INTERVAL:g}s (fast {FAST * 1000:.0f}ms while pending), "
            f"timeout {TIMEOUT * 1000:.0f}ms, fall {FALL}, rise {RISE}, failback hold {hold:g}s"
        )
        recovered = await _script(tl, a, outage, hold, worst, tmp / "active-route")
    except RuntimeError as e:
        print(str(e), file=sys.stderr)
        return 1
    finally:
        app.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        a.close()
        b.close()
        shutil.rmtree(tmp, ignore_errors=True)
    _report(tl, recovered, worst)
    return 0


def _report(tl: _Timeline, recovered: float, worst: float) -> None:
    t0 = tl.outage_at
    assert t0 is not None
    rows = sorted(
        [
            *(r for r in (tl.last_good_a, tl.first_fail_a) if r),
            (t0, "carrier-a goes silent (scripted outage)"),
            (recovered, "carrier-a answers again"),
            *((t, m) for t, m in tl.rows if t >= t0 - 0.001),
        ],
        key=lambda r: r[0],
    )
    _say("\nTimeline (ms from the outage):")
    for t, msg in rows:
        _say(f"{(t - t0) * 1000:>9.0f}  {msg}")
    down = next(t for t, m in tl.rows if m.startswith("trunk:carrier-a up -> down") and t >= t0)
    switched = next(t for t, m in tl.rows if "applied: carrier-b" in m and t >= t0)
    _say(
        f"\nOutage to carrier-a declared down: {(down - t0) * 1000:.0f} ms "
        f"(bound for these settings: {worst * 1000:.0f} ms plus scheduling jitter, "
        "README 'Detection bound'); "
        f"route applied {(switched - down) * 1000:.0f} ms later."
    )
    _say(
        "For comparison: Kamailio dispatcher with default probing needs ~30 s, "
        "an Acme Packet SBC 32 s."
    )
