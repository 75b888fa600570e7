"""`trunkguard probe URI`: a ping/sipsak-like OPTIONS pinger for operators."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import TextIO

from trunkguard import __version__
from trunkguard.core.classify import OkCodes, describe
from trunkguard.core.events import ProbeOutcome
from trunkguard.sip.prober import UdpProber
from trunkguard.sip.uri import SipUri, parse_uri


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _line(seq: int, uri: SipUri, o: ProbeOutcome, timeout: float) -> str:
    where = uri.hostport if uri.port else f"{uri.hostport}:5060"
    if o.reason == "response":
        extra = f" retry-after={o.retry_after:.0f}s" if o.retry_after is not None else ""
        return f"seq={seq} {o.code} {o.phrase} from {where} rtt={_ms(o.rtt or 0.0)} ms{extra}"
    if o.reason == "timeout":
        return f"seq={seq} timeout after {timeout * 1000:.0f} ms"
    if o.reason in ("refused", "unreachable"):
        return f"seq={seq} {describe(o)} from {where} in {_ms(o.rtt or 0.0)} ms"
    return f"seq={seq} {describe(o)}"


def _summary(uri: SipUri, results: list[tuple[ProbeOutcome, bool]]) -> list[str]:
    alive = sum(ok for _, ok in results)
    n = len(results)
    loss = 100 * (n - alive) // n if n else 0
    text = f"{n} probes, {alive} alive, {n - alive} failed, {loss}% loss"
    rtts = [o.rtt for o, _ in results if o.reason == "response" and o.rtt is not None]
    if rtts:
        text += (
            f"; rtt min/avg/max = {min(rtts) * 1000:.2f}/{sum(rtts) / len(rtts) * 1000:.2f}"
            f"/{max(rtts) * 1000:.2f} ms"
        )
    return [f"--- {uri} probe statistics ---", text]


async def ping(
    uri_text: str,
    *,
    count: int,
    interval: float,
    timeout: float,
    ok_codes: Sequence[str],
    source_address: str | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Probe until `count` probes are done (0: until cancelled / Ctrl-C); print like ping.

    Returns 0 if the last probe found the target alive, 1 if not, 2 for bad input.
    """
    try:
        uri = parse_uri(uri_text)
    except ValueError as exc:
        print(f"trunkguard probe: bad URI {uri_text!r}: {exc}", file=sys.stderr)
        return 2
    try:
        codes = OkCodes.parse(ok_codes)
        prober = UdpProber(user_agent=f"trunkguard/{__version__}", source_address=source_address)
    except ValueError as exc:
        print(f"trunkguard probe: {exc}", file=sys.stderr)
        return 2
    print(f"OPTIONS {uri} via {uri.transport.upper()}, timeout {timeout * 1000:.0f} ms", file=out)
    results: list[tuple[ProbeOutcome, bool]] = []
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    try:
        async with prober:
            while count == 0 or len(results) < count:
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                next_at = loop.time() + interval
                outcome = await prober.probe_uri(uri, timeout=timeout)
                results.append((outcome, outcome.reason == "response" and outcome.code in codes))
                print(_line(len(results), uri, outcome, timeout), file=out, flush=True)
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Ctrl-C ends an endless run: report what we have, like ping does. This is a
        # command's top level, so the cancellation is consumed, not propagated.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    print("\n".join(_summary(uri, results)), file=out, flush=True)
    return 0 if results and results[-1][1] else 1
