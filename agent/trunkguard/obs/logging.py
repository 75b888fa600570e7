"""Structured logging: JSON lines for journald/collectors, readable text on a TTY.

Everything goes to stdout (systemd sends it to the journal). Library logs that use
the stdlib `logging` module (paho-mqtt, asyncio) are rendered the same way.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}
_SECRET_KEY = re.compile(r"password|passwd|secret|token|psk|key_?pass|credential", re.IGNORECASE)
_REDACTED = "***"
_NAME_KEY = "_logger_name"

# The level lives here, not in the wrapper class: loggers already bound with .bind()
# keep their wrapper class, so a reload could not lower or raise their level.
_min_level = logging.INFO
_handler: logging.Handler | None = None


def _level_filter(_logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    if _LEVELS.get(method, logging.CRITICAL) < _min_level:
        raise structlog.DropEvent
    return event_dict


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key):
        return _REDACTED
    if isinstance(value, Mapping):
        return {str(k): _redact_value(str(k), v) for k, v in value.items()}
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace values of secret-looking keys (also in nested mappings) by ***."""
    for key in list(event_dict):
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


def _shared() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        _logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
        structlog.processors.StackInfoRenderer(),
    ]


def _logger_name(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    # get_logger() cannot pass `logger=` as an initial value (wrap_logger's own argument).
    name = event_dict.pop(_NAME_KEY, None)
    record = event_dict.get("_record")
    if name is None and isinstance(record, logging.LogRecord):
        name = record.name
    if name is not None:
        event_dict.setdefault("logger", name)
    return event_dict


def configure_logging(level: str = "info", json_output: bool | None = None) -> None:
    """Configure structlog and stdlib logging; safe to call again (e.g. on reload)."""
    global _min_level, _handler
    try:
        _min_level = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None
    if json_output is None:
        json_output = not sys.stdout.isatty()
    renderer: Processor
    if json_output:
        renderer = structlog.processors.JSONRenderer()
        tail: list[Processor] = [structlog.processors.format_exc_info, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        tail = [renderer]
    structlog.configure(
        processors=[_level_filter, *_shared(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        # No file argument: PrintLogger then follows the current sys.stdout.
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *tail,
        ],
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stdout)
    _handler.setFormatter(formatter)
    root.addHandler(_handler)
    root.setLevel(_min_level)


def get_logger(name: str | None = None, **initial: Any) -> FilteringBoundLogger:
    """A lazy proxy (follows later configure_logging calls); `name` becomes `logger`."""
    values: MutableMapping[str, Any] = dict(initial)
    if name:
        values[_NAME_KEY] = name
    return cast(FilteringBoundLogger, structlog.get_logger(**values))
