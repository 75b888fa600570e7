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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trunkguard.config import parse_config
from trunkguard.core.health import HealthParams, detection_bound
from trunkguard.daemon import Daemon
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
    def __init__(self) -> None:
        self.rows: list[tuple[float, str]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        self.last_good_a: tuple[float, str] | None = None
        self.first_fail_a: tuple[float, str] | None = None
        self.outage_at: float | None = None

    def __call__(self, kind: str, f: Mapping[str, Any]) -> None:
        self.events.append((kind, dict(f)))
        if kind == "probe" and f["target"] == "trunk:carrier-a":
            if f["ok"] and self.outage_at is None:
                rtt = f"{f['rtt'] * 1000:.2f} ms" if f.get("rtt") is not None else ""
                self.last_good_a = (f["at"], f"last good probe of carrier-a ({f['reason']}, {rtt})")
            elif not f["ok"] and self.outage_at is not None and self.first_fail_a is None:
                self.first_fail_a = (f["at"], f"first failed probe of carrier-a: {f['reason']}")
        elif kind == "transition":
            self.rows.append((f["mono"], f"{f['target']} {f['old']} -> {f['new']}: {f['reason']}"))
        elif kind == "decision":
            self.rows.append(
                (
                    f["mono"],
                    f"route {f['group']}: {f['old'] or '-'} -> {f['new']} "
                    f"({f['kind']}: {f['reason']})",
                )
            )
        elif kind == "applied":
            self.rows.append(
                (
                    f["mono"],
                    f"route {f['group']} applied: {f['path']} "
                    f"(decision to applied {f['apply_ms']:.1f} ms)",
                )
            )
        self.changed.set()

    async def until(self, pred: Any, timeout: float, what: str) -> None:
        async def wait() -> None:
            while not pred():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise RuntimeError(f"lab: timed out waiting for {what}") from None

    def applied(self, path: str, after: float = 0.0) -> bool:
        return any(
            k == "applied" and f["path"] == path and f["mono"] >= after for k, f in self.events
        )


def _say(msg: str) -> None:
    print(msg, flush=True)


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
    daemon = Daemon(str(tmp / "trunkguard.yaml"), parse_config(text), observer=tl, json_logs=False)
    task = asyncio.create_task(daemon.run())
    worst = detection_bound(HealthParams(INTERVAL, FAST, RISE, FALL), TIMEOUT)
    try:
        _say(f"trunkguard lab: carrier-a on 127.0.0.1:{a.port}, carrier-b on 127.0.0.1:{b.port}")
        _say(
            f"probing every {INTERVAL:g}s (fast {FAST * 1000:.0f}ms while pending), "
            f"timeout {TIMEOUT * 1000:.0f}ms, fall {FALL}, rise {RISE}, failback hold {hold:g}s"
        )
        await tl.until(lambda: tl.applied("carrier-a"), 10, "the initial route")
        _say("route outbound -> carrier-a (initial); waiting for two good probes")
        goods = sum(1 for k, f in tl.events if k == "probe" and f["ok"])
        await tl.until(
            lambda: sum(1 for k, f in tl.events if k == "probe" and f["ok"]) >= goods + 4,
            10,
            "steady probes",
        )
        await asyncio.sleep(0.4 * INTERVAL)  # scripted: the outage starts mid-interval
        tl.outage_at = time.monotonic()
        a.silent = True
        _say("OUTAGE: carrier-a stops answering")
        await tl.until(
            lambda: tl.applied("carrier-b", tl.outage_at or 0.0),
            2 * worst + 5,
            "failover to carrier-b",
        )
        _say(f"routing file says: {(tmp / 'active-route').read_text()}")
        await asyncio.sleep(max(0.0, tl.outage_at + outage - time.monotonic()))  # scripted outage
        recovered = time.monotonic()
        a.silent = False
        _say("RECOVERY: carrier-a answers again")
        await tl.until(
            lambda: tl.applied("carrier-a", recovered), hold + 10, "failback to carrier-a"
        )
        _say(f"routing file says: {(tmp / 'active-route').read_text()}")
    except RuntimeError as e:
        print(str(e), file=sys.stderr)
        return 1
    finally:
        daemon.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        a.close()
        b.close()
        shutil.rmtree(tmp, ignore_errors=True)

    t0 = tl.outage_at
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
    return 0
