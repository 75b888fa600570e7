"""Collect a Converger's reports and await the one a test is waiting for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from trunkguard.act.converge import ApplyReport

WAIT = 5.0  # safety net only: every wait ends on an event


class Reports:
    def __init__(self) -> None:
        self.items: list[ApplyReport] = []
        self._new = asyncio.Event()

    def __call__(self, report: ApplyReport) -> None:
        self.items.append(report)
        self._new.set()

    async def wait(self, pred: Callable[[ApplyReport], bool]) -> ApplyReport:
        """The first report (old or new) matching pred."""
        async with asyncio.timeout(WAIT):
            seen = 0
            while True:
                for r in self.items[seen:]:
                    if pred(r):
                        return r
                seen = len(self.items)
                self._new.clear()
                await self._new.wait()

    async def count(self, n: int) -> list[ApplyReport]:
        await self.wait(lambda _: len(self.items) >= n)
        return self.items[:n]
