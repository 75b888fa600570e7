"""Taking over a dead peer site's calls, without split brain.

Pure. One machine per peer that some route path `serves`. A takeover needs:
- MQTT evidence: the peer is down (a death of its live session, or its heartbeat
  expired). A peer that announces evacuation hands over explicitly: taken at once.
- Second evidence: every `confirm` target (our own probes of the peer's SBC) is down.
  If one still answers, the peer is alive behind a partition: refused, with an alarm.
- QuorumMode (optional): a majority of the voters sees the peer down (ties go to the
  side holding the lowest voter name), so a site cut off from the others never acts.
- The fence: evidence must have held for `fence` seconds since the peer went down,
  time for a peer that merely lost its broker to notice and stop (it fences itself
  within its heartbeat expiry).
- Never while this agent is fenced (it cannot see the broker, its own heartbeat or
  any other voter) or evacuating itself: it freezes, keeping what it has.
A takeover is released once the peer has been up for `hold` (auto) or by the
operator (manual, or earlier); never at once, so a flapping peer does not swap calls
back and forth. Claims are published; a rival claim with a higher epoch (ties: the
lower site name) wins and this agent releases.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from trunkguard.core.events import State, TakeoverChange, TakeoverState
from trunkguard.core.ids import TargetId

States = Mapping[TargetId, State]


class Release(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


class QuorumMode(StrEnum):
    NONE = "none"
    MAJORITY = "majority"


@dataclass(frozen=True, slots=True)
class TakeoverSpec:
    peer: str
    target: TargetId  # peer:<site>
    confirm: tuple[TargetId, ...] = ()  # second evidence; empty: none asked for
    fence: float = 3.0
    hold: float = 60.0
    release: Release = Release.AUTO


@dataclass(frozen=True, slots=True)
class Voting:
    """Who votes on a takeover; `me` is this site. Empty voters: no quorum asked."""

    me: str = ""
    quorum: QuorumMode = QuorumMode.NONE
    voters: tuple[str, ...] = ()

    def verdict(self, peer: str, votes: set[str]) -> str | None:
        """None when `votes` (sites seeing the peer down, us included) carry it."""
        if self.quorum is QuorumMode.NONE:
            return None
        n = len(self.voters)
        if 2 * len(votes) > n:
            return None
        lowest = min(self.voters)
        if 2 * len(votes) == n and lowest in votes:
            return None  # a tie goes to the side holding the lowest name
        seen = ", ".join(sorted(votes)) or "none"
        return f"no quorum: {len(votes)} of {n} voters see {peer} down ({seen})"


@dataclass(frozen=True, slots=True)
class Context:
    """What a takeover is decided on, gathered by the engine at one instant."""

    states: States
    peer_since: float  # when the peer entered its current state
    votes: set[str]  # voters (us included) that see the peer down
    fenced: str | None  # why this agent is fenced, or None
    evacuating: bool  # this site is itself evacuating
    epoch: int  # this agent's session


@dataclass(slots=True)
class Takeover:
    spec: TakeoverSpec
    voting: Voting = field(default_factory=Voting)
    state: TakeoverState = TakeoverState.IDLE
    since: float = 0.0
    reason: str = "peer not down"
    refused: str | None = None  # the refusal of this episode, reported once
    claims: dict[str, int] = field(default_factory=dict)  # rival "site/node" -> epoch

    @property
    def serving(self) -> bool:
        return self.state in (TakeoverState.ACTIVE, TakeoverState.RELEASING)

    def claim(self, who: str, epoch: int | None) -> None:
        """A rival's claim ("site/node"; epoch None: withdrawn); evaluate() weighs it."""
        if epoch is None:
            self.claims.pop(who, None)
        else:
            self.claims[who] = epoch

    def _rival(self, epoch: int) -> str | None:
        """A rival claim that beats ours: the higher epoch, on a tie the lower site."""
        for who, e in sorted(self.claims.items()):
            if e > epoch or (e == epoch and who.split("/")[0] < self.voting.me):
                return f"{who} claims {self.spec.peer} with a later session ({e} > {epoch})"
        return None

    def evaluate(self, ctx: Context, now: float) -> TakeoverChange | None:
        if ctx.fenced is not None:
            return None  # frozen: keep what we have, claim nothing new
        peer = ctx.states.get(self.spec.target, State.UNKNOWN)
        if self.serving:
            rival = self._rival(ctx.epoch)
            if rival is not None:
                return self._move(TakeoverState.IDLE, now, rival, "lost")
            # Back means its agent (heartbeat) and its SBC (our probes): calls sent back
            # to an agent whose SBC is still dark would be lost.
            sbc_down = [t for t in self.spec.confirm if ctx.states.get(t) is not State.UP]
            if peer is State.UP and not sbc_down:
                if self.state is TakeoverState.ACTIVE:
                    how = f"releasing after {self.spec.hold:g}s up"
                    if self.spec.release is Release.MANUAL:
                        how = "release by the operator"
                    return self._move(TakeoverState.RELEASING, now, f"peer up; {how}", "")
                if self.spec.release is Release.AUTO and now >= self.since + self.spec.hold:
                    why = f"{self.spec.peer} up for {self.spec.hold:g}s"
                    return self._move(TakeoverState.IDLE, now, why, "released")
                return None
            if self.state is TakeoverState.RELEASING:
                why = f"{self.spec.peer} {peer} again during the hold"
                if peer is State.UP:
                    why = f"{', '.join(map(str, sbc_down))} not up again during the hold"
                return self._move(TakeoverState.ACTIVE, now, why, "")
            return None
        if peer is State.EVACUATING:
            why = f"{self.spec.peer} announced evacuation (explicit hand-over)"
            return self._move(TakeoverState.ACTIVE, now, why, "taken")
        if peer is not State.DOWN:
            self.refused = None  # a new episode may be refused again
            if self.state is TakeoverState.PENDING:
                why = f"{self.spec.peer} {peer} before the fence ended"
                return self._move(TakeoverState.IDLE, now, why, "")
            return None
        blocked, result = self._blocked(ctx)
        if blocked is not None:
            self.reason = blocked
            if self.state is TakeoverState.PENDING:
                return self._move(TakeoverState.IDLE, now, blocked, result)
            if blocked != self.refused and result:
                self.refused = blocked
                return TakeoverChange(self.spec.peer, self.state, self.state, now, blocked, result)
            return None
        evidence = self._evidence(ctx)
        if self.state is TakeoverState.IDLE:
            why = f"{evidence}; fence {self.spec.fence:g}s"
            return self._move(TakeoverState.PENDING, now, why, "")
        if now >= self.due(ctx.peer_since):
            return self._move(TakeoverState.ACTIVE, now, evidence, "taken")
        return None

    def _blocked(self, ctx: Context) -> tuple[str | None, str]:
        """Why a takeover must not happen now, and the result to count it as."""
        if ctx.evacuating:
            return "this site is evacuating itself", "refused_evacuating"
        if self._rival(ctx.epoch) is not None:
            return "another site holds the claim", ""
        answering = [str(t) for t in self.spec.confirm if ctx.states.get(t) is State.UP]
        if answering:
            why = f"partition suspected: MQTT says {self.spec.peer} is down but "
            return why + f"{', '.join(answering)} still answers", "refused_partition"
        pending = [str(t) for t in self.spec.confirm if ctx.states.get(t) is not State.DOWN]
        if pending:
            return f"waiting for second evidence: {', '.join(pending)} not down", ""
        no_quorum = self.voting.verdict(self.spec.peer, ctx.votes)
        if no_quorum is not None:
            return no_quorum, "refused_quorum"
        return None, ""

    def _evidence(self, ctx: Context) -> str:
        why = f"{self.spec.peer} down"
        if self.spec.confirm:
            why += f", {', '.join(map(str, self.spec.confirm))} down too"
        if self.voting.quorum is not QuorumMode.NONE:
            why += f", {len(ctx.votes)} of {len(self.voting.voters)} voters agree"
        return why

    def due(self, peer_since: float) -> float:
        return max(peer_since + self.spec.fence, self.since)

    def next_wakeup(self, peer_since: float) -> float | None:
        if self.state is TakeoverState.PENDING:
            return self.due(peer_since)
        if self.state is TakeoverState.RELEASING and self.spec.release is Release.AUTO:
            return self.since + self.spec.hold
        return None

    def release(self, now: float) -> TakeoverChange | None:
        """The operator ends a takeover (or a pending one)."""
        if self.state is TakeoverState.IDLE:
            raise ValueError(f"no takeover of {self.spec.peer} to release")
        return self._move(TakeoverState.IDLE, now, "released by the operator", "released")

    def restore(self, now: float) -> None:
        """After a restart: a takeover that was active stays active until released."""
        self.state, self.since, self.reason = TakeoverState.ACTIVE, now, "restored after restart"

    def _move(self, new: TakeoverState, at: float, reason: str, result: str) -> TakeoverChange:
        c = TakeoverChange(self.spec.peer, self.state, new, at, reason, result)
        self.state, self.since, self.reason = new, at, reason
        if new is TakeoverState.IDLE:
            self.refused = reason if result.startswith("refused") else None
        return c
