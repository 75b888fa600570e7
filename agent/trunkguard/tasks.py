"""Supervised background tasks: a failure is logged and the task restarted with backoff."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def supervise(name: str, fn: Callable[[], Awaitable[None]], log: Any) -> None:
    """Keep a background task alive: log and restart it if it ever fails."""
    delay = 0.5
    while True:
        try:
            await fn()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task failed, restarting", task=name, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
