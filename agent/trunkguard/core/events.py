"""The core's vocabulary: observations in, one typed Event stream out.

Inputs (probers, watchers) produce observations; the core turns them into events
(transitions, decisions, sensor and site changes). Times are monotonic seconds
passed in by the shell: the core never reads a clock. Sinks subscribe by type.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from trunkguard.core.ids import Paths, TargetId


class State(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"
    MAINTENANCE = "maintenance"
    EVACUATING = "evacuating"  # a peer site handing its calls over


class Outcome(StrEnum):
    """What one probe saw on the wire."""

    RESPONSE = "response"  # a final response matched the probe (code/phrase set)
    TIMEOUT = "timeout"  # no final response before the per-probe deadline
    REFUSED = "refused"  # ICMP port unreachable (IP_RECVERR) or connection refused
    UNREACHABLE = "unreachable"  # ICMP host/net unreachable, no route
    SEND_ERROR = "send_error"  # the local stack refused to send (ENOBUFS, EPERM, ...)
    DNS = "dns"  # the target name did not resolve
    RESET = "reset"  # a stream connection was reset or closed under the probe
    TLS = "tls"  # TLS handshake or certificate verification failed


class DecisionKind(StrEnum):
    INITIAL = "initial"
    FAILOVER = "failover"
    FAILBACK = "failback"
    MANUAL = "manual"
    EVACUATE = "evacuate"
    RETURN = "return"
    TAKEOVER = "takeover"  # serving a dead peer site's calls
    RELEASE = "release"  # the peer is back: its calls go home


class Level(StrEnum):
    """A sensor's level."""

    UNKNOWN = "unknown"
    OK = "ok"
    WARN = "warn"
    CRITICAL = "critical"
    STALE = "stale"


class TakeoverState(StrEnum):
    IDLE = "idle"
    PENDING = "pending"  # evidence complete, the fence is running
    ACTIVE = "active"  # serving the peer's calls
    RELEASING = "releasing"  # the peer is back, waiting out the hold


class SiteState(StrEnum):
    NORMAL = "normal"
    EVACUATING = "evacuating"


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """What one SIP OPTIONS probe saw on the wire, before any policy."""

    at: float
    reason: Outcome
    code: int | None = None
    phrase: str = ""
    rtt: float | None = None
    retry_after: float | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """One observation classified as alive or not, ready for a health FSM."""

    target: TargetId
    ok: bool
    at: float
    reason: str
    hold_until: float | None = None


# ---- events: what the core says happened ------------------------------------------


@dataclass(frozen=True, slots=True)
class Transition:
    """A target changed state."""

    target: TargetId
    old: State
    new: State
    at: float
    reason: str
    drill: bool = False  # caused by a drill (structural: never read from a reason)


@dataclass(frozen=True, slots=True)
class DestTransition:
    """One resolved destination of a multi-destination trunk changed state; reported,
    never routed on (the trunk's own Transition follows when its quorum changes)."""

    target: TargetId  # with dest set
    old: State
    new: State
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """A route group changed (or first chose) its active path."""

    group: str
    old: Paths | None
    new: Paths
    at: float
    kind: DecisionKind
    reason: str
    cause_at: float  # when the evidence that caused it was observed
    drill: bool = False  # caused by a drill (structural: never read from a reason)


@dataclass(frozen=True, slots=True)
class SensorChange:
    sensor: str
    old: Level
    new: Level
    at: float
    reason: str
    drill: bool = False  # caused by a drill (structural: never read from a reason)


@dataclass(frozen=True, slots=True)
class SensorReading:
    """A sensor was read (every reading: trends and values move without a change)."""

    sensor: str
    value: float | bool
    at: float


@dataclass(frozen=True, slots=True)
class SensorFault:
    """A sensor could not be read; staleness decides when that becomes a level."""

    sensor: str
    error: str
    at: float


@dataclass(frozen=True, slots=True)
class SiteChange:
    old: SiteState
    new: SiteState
    at: float
    reason: str
    forced: bool
    drill: bool = False  # caused by a drill (structural: never read from a reason)


@dataclass(frozen=True, slots=True)
class TakeoverChange:
    """A takeover moved, or was refused (old == new) with the reason and evidence.

    result: taken, released, lost (a rival's claim won), refused_partition,
    refused_quorum, refused_evacuating; empty for steps that are neither."""

    peer: str
    old: TakeoverState
    new: TakeoverState
    at: float
    reason: str
    result: str


@dataclass(frozen=True, slots=True)
class Fence:
    """This agent fenced itself (cannot see the broker or any other voter) or ended it."""

    on: bool
    at: float
    reason: str
    since: float  # when the previous fence state began


Event = (
    Transition
    | DestTransition
    | Decision
    | SensorChange
    | SensorReading
    | SensorFault
    | SiteChange
    | TakeoverChange
    | Fence
)
