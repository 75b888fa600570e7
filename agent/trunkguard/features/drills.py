"""Scheduled drills (section `drills`): a drill every so often, in a maintenance window,
never while the site is degraded.

    drills:
      schedule:
        - {scenario: carrier, group: outbound, every: 30d, window: "Sun 02:00-04:00"}

The window is the host's local time: optional days (mon..sun, ranges and lists,
"mon-fri" or "sat,sun") and a start and end ("23:00-01:00" runs over midnight, on
the days it starts). When each entry last ran is kept in state_dir/drills.json; an
entry seen for the first time counts from then, so a restart does not run it early.
A due drill is skipped (logged once per reason, counted as `skipped`) while anything
is down, in maintenance, warn or worse, evacuating, fenced or pinned, and tried again
at the next check.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from typing import TYPE_CHECKING, Literal

from pydantic import field_validator

from trunkguard import persist
from trunkguard.drills import DrillError, Drills
from trunkguard.features.base import Context, Feature, Parts
from trunkguard.schema import Duration, Lines, Name, Strict

if TYPE_CHECKING:
    from trunkguard.config import Config

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CHECK_EVERY = 30.0  # how often due drills are looked for
_WINDOW = re.compile(r"^(?:([a-z,-]+)\s+)?(\d\d):(\d\d)-(\d\d):(\d\d)$")


class Window:
    """Days of the week and a time of day span, e.g. "sat,sun 02:00-04:00"."""

    def __init__(self, text: str) -> None:
        m = _WINDOW.match(text.strip().lower())
        if m is None:
            raise ValueError(f"bad window {text!r}: use [DAYS ]HH:MM-HH:MM, e.g. 'sun 02:00-04:00'")
        days, h1, m1, h2, m2 = m.groups()
        self.days = _days(days) if days else frozenset(range(7))
        if int(h1) > 23 or int(h2) > 23 or int(m1) > 59 or int(m2) > 59:
            raise ValueError(f"bad time of day in window {text!r}")
        self.start, self.end = int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)
        if self.start == self.end:
            raise ValueError(f"window {text!r} is empty")

    def __contains__(self, when: dt.datetime) -> bool:
        minute = when.hour * 60 + when.minute
        day = when.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        # Over midnight: the evening of a listed day, or the morning after it.
        return (day in self.days and minute >= self.start) or (
            (day - 1) % 7 in self.days and minute < self.end
        )


def _days(text: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        a, _, b = part.partition("-")
        if a not in DAYS or (b and b not in DAYS):
            raise ValueError(f"bad day {part!r}: use {', '.join(DAYS)}, ranges or lists")
        i, j = DAYS.index(a), DAYS.index(b or a)
        out.update((i + k) % 7 for k in range((j - i) % 7 + 1))
    return frozenset(out)


class ScheduledDrill(Strict):
    scenario: Literal["carrier", "platform", "link", "site", "cooling"]
    group: Name | None = None  # default: as `trunkguard drill` picks it
    every: Duration
    window: str | None = None  # local time; None: any time

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is not None:
            Window(v)
        return v

    @property
    def key(self) -> str:
        return f"{self.scenario}:{self.group or '-'}"


class DrillsConfig(Strict):
    schedule: list[ScheduledDrill] = []


class ScheduledDrills(Feature):
    name = "drills"

    def check(self, cfg: Config, lines: Lines) -> list[str]:
        problems = []
        for i, d in enumerate(cfg.drills.schedule):
            if d.group is not None and d.group not in cfg.routes:
                loc = ("drills", "schedule", i, "group")
                problems.append(lines.problem(loc, f"unknown route group {d.group!r}"))
        return problems

    def build(self, ctx: Context) -> Parts:
        if not ctx.cfg.drills.schedule or ctx.drills is None:
            return Parts()
        return Parts(tasks=[("drill schedule", Scheduler(ctx, ctx.drills).run)])


class Scheduler:
    def __init__(self, ctx: Context, drills: Drills) -> None:
        self.ctx, self.drills = ctx, drills
        self.entries = ctx.cfg.drills.schedule
        self.said: dict[str, str] = {}  # the last skip reason logged, per entry

    async def run(self) -> None:
        state_dir = self.ctx.cfg.state_dir
        last = persist.load_counters(state_dir, "drills.json")
        now = round(time.time())
        if any(e.key not in last for e in self.entries):
            last |= {e.key: now for e in self.entries if e.key not in last}
            persist.save_counters(state_dir, last, "drills.json")
        while True:
            for e in self.entries:
                now = round(time.time())
                if not due(e, last.get(e.key, now), now):
                    continue
                if await self._attempt(e):
                    last[e.key] = round(time.time())
                    persist.save_counters(state_dir, last, "drills.json")
            await asyncio.sleep(min(CHECK_EVERY, *(e.every for e in self.entries)))

    async def _attempt(self, e: ScheduledDrill) -> bool:
        """Run it if the site is fit for it; False when skipped."""
        log, m = self.ctx.log, self.ctx.metrics
        try:
            why = self.drills.degraded()
            if why is not None:
                raise DrillError(why)
            plan = self.drills.plan(e.scenario, e.group)
        except DrillError as err:
            if self.said.get(e.key) != str(err):
                self.said[e.key] = str(err)
                log.warning("scheduled drill skipped", scenario=e.scenario, reason=str(err))
            m.drills_total.labels(e.scenario, "skipped").inc()
            return False
        self.said.pop(e.key, None)
        log.warning("drill", scenario=e.scenario, id=plan.id, inject=plan.inject, by="schedule")
        await self.drills.run(plan)
        return True


def due(e: ScheduledDrill, last: int, now: int) -> bool:
    """Pure: `every` has passed since it last ran and now is in its window."""
    if now - last < e.every:
        return False
    return e.window is None or dt.datetime.fromtimestamp(now) in Window(e.window)


FEATURE = ScheduledDrills()
