"""Run one synthetic call in a child process (calls/child.py) with a hard deadline.

A crash, a hang or garbage from the child is a failed check with that reason; the
agent's loop never waits on PJSIP. The child's logs (stderr) are kept to the last
line, for the reason, and never reach the agent's stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_OUTPUT = 64 * 1024
CHILD = (sys.executable, "-m", "trunkguard.calls.child")


@dataclass(frozen=True, slots=True)
class CallResult:
    ok: bool
    reason: str
    rtp_rx: int = 0
    rtp_tx: int = 0
    loss_ratio: float | None = None
    jitter_s: float | None = None
    ringing_s: float | None = None  # INVITE to the first 180/183
    answered_s: float | None = None  # INVITE to 200
    tone_back: float | None = None  # share of the received power at our tone

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> CallResult:
        pdd = doc.get("post_dial_delay_s") or {}

        def num(v: object) -> float | None:
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

        return cls(
            ok=doc.get("ok") is True,
            reason=str(doc.get("reason", "no reason"))[:300],
            rtp_rx=int(num(doc.get("rtp_rx")) or 0),
            rtp_tx=int(num(doc.get("rtp_tx")) or 0),
            loss_ratio=num(doc.get("loss_ratio")),
            jitter_s=num(doc.get("jitter_s")),
            ringing_s=num(pdd.get("ringing")),
            answered_s=num(pdd.get("answered")),
            tone_back=num(doc.get("tone_back")),
        )


async def place(
    spec: Mapping[str, Any], deadline: float, argv: Sequence[str] = CHILD
) -> CallResult:
    """Place the call `spec` describes; never raises, never outlives `deadline`."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        return CallResult(False, f"call check could not start: {e}")
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(spec).encode()), deadline)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return CallResult(False, f"call check hung: killed after {deadline:g}s")
    last = out.strip().splitlines()[-1:] if out else []
    try:
        doc = json.loads(last[0][:MAX_OUTPUT]) if last else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return CallResult(False, f"call check crashed (exit {proc.returncode}): {tail[0][:200]}")
    return CallResult.from_doc(doc)
