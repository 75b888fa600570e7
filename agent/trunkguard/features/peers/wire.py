"""What peers publish, parsed as hostile input: bounded, typed, one-line errors.

Every payload comes from the network (any account that may publish under a peer's
prefix, a bridge, a broker restart replaying old retained messages). Nothing here
trusts a field: sizes, types, ranges and vocabularies are checked before the core
sees an observation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from trunkguard.bus.mqtt import Received
from trunkguard.core.events import SiteState, State
from trunkguard.core.peer import PeerBeat, PeerStatus

MAX_EPOCH = (1 << 63) - 1
MAX_VIEWS = 64  # sites a heartbeat may report on


class WireError(ValueError):
    """A peer message that cannot be believed; the text says why, in one line."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A takeover claim by site/node on a peer's calls; epoch None: withdrawn."""

    site: str
    node: str
    peer: str
    epoch: int | None


def _doc(m: Received, limit: int) -> dict[str, Any]:
    if len(m.payload) > limit:
        raise WireError(f"payload of {len(m.payload)} bytes (max_payload {limit})")
    try:
        doc = json.loads(m.payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise WireError(f"not JSON: {str(e)[:80]}") from None
    if not isinstance(doc, dict):
        raise WireError("not a JSON object")
    return doc


def _epoch(doc: dict[str, Any]) -> int:
    e = doc.get("epoch")
    if type(e) is not int or not 0 <= e <= MAX_EPOCH:
        raise WireError(f"epoch must be an integer from 0 to 2^63-1, got {str(e)[:40]!r}")
    return e


def epoch_of(m: Received, limit: int) -> int:
    return _epoch(_doc(m, limit))


def status(site: str, node: str, m: Received, limit: int) -> PeerStatus:
    doc = _doc(m, limit)
    word = doc.get("status")
    if word not in ("online", "offline"):
        raise WireError(f"status must be online or offline, got {str(word)[:40]!r}")
    return PeerStatus(site, node, _epoch(doc), word == "online")


def beat(site: str, node: str, m: Received, limit: int, ttl: float) -> PeerBeat:
    doc = _doc(m, limit)
    epoch = _epoch(doc)
    site_state = doc.get("site", SiteState.NORMAL.value)
    if site_state not in SiteState.__members__.values():
        raise WireError(f"site must be normal or evacuating, got {str(site_state)[:40]!r}")
    raw = doc.get("peers", {})
    if not isinstance(raw, dict) or len(raw) > MAX_VIEWS:
        raise WireError(f"peers must be an object of at most {MAX_VIEWS} sites")
    views: dict[str, State] = {}
    for name, value in raw.items():
        if value not in State.__members__.values():
            raise WireError(f"peers.{str(name)[:40]}: unknown state {str(value)[:40]!r}")
        views[str(name)] = State(value)
    fenced = doc.get("fenced", False)
    if not isinstance(fenced, bool):
        raise WireError("fenced must be true or false")
    evacuating = site_state == SiteState.EVACUATING.value
    return PeerBeat(site, node, epoch, ttl, evacuating, views, fenced)


def claim(site: str, node: str, peer: str, m: Received, limit: int) -> Claim:
    """A claim stands while its document says claimed: true (empty: cleared)."""
    if not m.payload:
        return Claim(site, node, peer, None)
    doc = _doc(m, limit)
    claimed = doc.get("claimed")
    if not isinstance(claimed, bool):
        raise WireError("claimed must be true or false")
    return Claim(site, node, peer, _epoch(doc) if claimed else None)
