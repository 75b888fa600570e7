"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from trunkguard.obs import logging as tglog


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests that configure logging: undo it, so no later test logs into a stream
    captured (and closed) by this one."""
    level = logging.getLogger().level
    yield
    structlog.reset_defaults()
    if tglog._handler is not None:
        logging.getLogger().removeHandler(tglog._handler)
        tglog._handler = None
    logging.getLogger().setLevel(level)
