"""Typed observations and decisions that cross the core boundary.

Inputs (probers, watchers) produce observations; the core turns them into
transitions and routing decisions. Times are monotonic seconds (time.monotonic),
passed in by the shell: the core never reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"
    MAINTENANCE = "maintenance"


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """What one SIP OPTIONS probe saw on the wire, before any policy.

    reason is one of:
      "response"     a final response matched the probe (code/phrase set)
      "timeout"      no final response before the per-probe deadline
      "refused"      ICMP port unreachable (IP_RECVERR) or connection refused
      "unreachable"  ICMP host/net unreachable, no route
      "send_error"   the local stack refused to send (ENOBUFS, EPERM, ...)
      "dns"          the target name did not resolve
    """

    at: float
    reason: str
    code: int | None = None
    phrase: str = ""
    rtt: float | None = None
    retry_after: float | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """One observation classified as alive or not, ready for a health FSM."""

    target: str
    ok: bool
    at: float
    reason: str
    hold_until: float | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A target changed state."""

    target: str
    old: State
    new: State
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """A route group changed (or first chose) its active path."""

    group: str
    old_path: str | None
    new_path: str
    at: float
    kind: str  # "initial" | "failover" | "failback" | "manual" | "evacuate" | "return"
    reason: str
    cause_at: float  # when the evidence that caused it was observed
