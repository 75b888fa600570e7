"""Intent kept across restarts: saved off the event loop after every change of routing,
maintenance or evacuation, bursts coalesced, so an fsync never delays a reroute."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from structlog.typing import FilteringBoundLogger

from trunkguard import persist
from trunkguard.core.events import Decision, Event, SiteChange, State, Transition
from trunkguard.hub import Hub


def _changes_intent(ev: Event) -> bool:
    if isinstance(ev, Decision | SiteChange):
        return True
    return isinstance(ev, Transition) and State.MAINTENANCE in (ev.new, ev.old)


class IntentSink:
    def __init__(self, hub: Hub, state_dir: str | None, log: FilteringBoundLogger) -> None:
        self.engine, self.state_dir, self.log = hub.engine, state_dir, log
        self._wake = asyncio.Event()
        self._failing: str | None = None  # the error while saving does not work
        hub.after_each(self.batch)

    def batch(self, events: Sequence[Event]) -> None:
        if any(_changes_intent(ev) for ev in events):
            self.request()

    def request(self) -> None:
        """Save soon (an operator command may change intent without any event)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await self._save()

    async def flush(self) -> None:
        """On stop: save what is pending now."""
        if self._wake.is_set():
            await self._save()

    async def _save(self) -> None:
        """Routing never waits for this; a disk that is full or read-only is said once."""
        self._wake.clear()
        try:
            await asyncio.to_thread(persist.save, self.state_dir, self.engine.intent())
        except OSError as e:
            if str(e) != self._failing:
                self.log.error("cannot save state, routing goes on", error=str(e))
            self._failing = str(e)
            return
        if self._failing is not None:
            self.log.info("state saved again", dir=self.state_dir)
            self._failing = None
