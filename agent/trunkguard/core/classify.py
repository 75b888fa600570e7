"""Turn a raw probe outcome into an alive/not-alive verdict (pure, no I/O, no clock)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trunkguard.core.events import Outcome, ProbeOutcome, Verdict
from trunkguard.core.ids import TargetId

_FAILURE_TEXT = {
    Outcome.REFUSED: "ICMP port unreachable",
    Outcome.UNREACHABLE: "host unreachable",
    Outcome.TIMEOUT: "timeout",
}


@dataclass(frozen=True, slots=True)
class OkCodes:
    """Which final status codes count as alive: exact codes and whole classes ("4xx")."""

    codes: frozenset[int] = frozenset()
    classes: frozenset[int] = frozenset()  # first digit, e.g. 2 for "2xx"

    @classmethod
    def default(cls) -> OkCodes:
        return cls(classes=frozenset({2}))

    @classmethod
    def parse(cls, items: Sequence[str | int]) -> OkCodes:
        if isinstance(items, str | bytes):  # a lone "2xx" would otherwise split into chars
            raise ValueError(f"ok codes must be a list, got {items!r}")
        if not items:
            raise ValueError("no status code patterns: list at least one, e.g. 2xx")
        codes: set[int] = set()
        classes: set[int] = set()
        for item in items:
            text = str(item).strip().lower() if not isinstance(item, bool) else "?"
            if len(text) == 3 and text[0] in "123456" and text[1:] == "xx":
                classes.add(int(text[0]))
            elif len(text) == 3 and text.isascii() and text.isdigit() and 100 <= int(text) <= 699:
                codes.add(int(text))
            else:
                raise ValueError(f"bad status code pattern {str(item)!r}: use e.g. 200, 403 or 2xx")
        return cls(frozenset(codes), frozenset(classes))

    def __contains__(self, code: object) -> bool:
        return isinstance(code, int) and (code in self.codes or code // 100 in self.classes)

    def __str__(self) -> str:
        items = [f"{c}xx" for c in sorted(self.classes)] + [str(c) for c in sorted(self.codes)]
        return ",".join(items)


def describe(outcome: ProbeOutcome) -> str:
    """A short human reason for an outcome, e.g. "503 Service Unavailable"."""
    if outcome.reason == Outcome.RESPONSE:
        return f"{outcome.code} {outcome.phrase}".strip()
    if outcome.reason in (Outcome.SEND_ERROR, Outcome.DNS):
        prefix = "send failed" if outcome.reason == Outcome.SEND_ERROR else "dns"
        return f"{prefix}: {outcome.detail}" if outcome.detail else prefix
    if outcome.reason == Outcome.TIMEOUT:
        return f"timeout {outcome.detail}" if outcome.detail else "timeout"
    return outcome.detail or _FAILURE_TEXT.get(outcome.reason, outcome.reason)


def classify(
    outcome: ProbeOutcome, *, target: TargetId, ok_codes: OkCodes, retry_after_cap: float
) -> Verdict:
    ok = outcome.reason == Outcome.RESPONSE and outcome.code in ok_codes
    hold_until = None
    if (
        outcome.reason == Outcome.RESPONSE
        and outcome.code == 503
        and not ok
        and outcome.retry_after is not None
    ):
        # the carrier asked us to stay away; honour it, but never longer than the cap
        hold_until = outcome.at + max(0.0, min(outcome.retry_after, retry_after_cap))
    return Verdict(
        target=target, ok=ok, at=outcome.at, reason=describe(outcome), hold_until=hold_until
    )
