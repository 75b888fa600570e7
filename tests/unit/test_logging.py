"""JSON lines on stdout when it is not a TTY, secrets redacted, level changes on reload."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import pytest

from trunkguard.obs.logging import configure_logging, get_logger

pytestmark = pytest.mark.usefixtures("restore_logging")


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines()]  # every line is one object


def test_json_lines_when_stdout_is_not_a_tty(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")  # auto: pytest's captured stdout is not a TTY
    get_logger("agent.test").info("probe.ok", trunk="carrierA", rtt=0.012)
    [rec] = lines(capsys)
    assert rec["event"] == "probe.ok" and rec["level"] == "info"
    assert rec["logger"] == "agent.test" and rec["trunk"] == "carrierA" and rec["rtt"] == 0.012
    assert datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).tzinfo is not None


def test_secrets_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json_output=True)
    log = get_logger("agent.test")
    log.info(
        "config.loaded",
        password="hunter2",
        mqtt={"user": "u", "password": "hunter2"},
        api_token="t0k",
        tls_psk="abc",
        key_passphrase="kp",
        Secret="s",
        host="h",
    )
    [rec] = lines(capsys)
    assert rec["password"] == rec["api_token"] == rec["tls_psk"] == "***"
    assert rec["key_passphrase"] == rec["Secret"] == "***"
    assert rec["mqtt"] == {"user": "u", "password": "***"} and rec["host"] == "h"


def test_level_filter_and_reload_reaches_existing_loggers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("warning", json_output=True)
    bound = get_logger("agent.test").bind(trunk="a")  # bound before the reload
    bound.info("hidden")
    bound.warning("shown")
    assert [r["event"] for r in lines(capsys)] == ["shown"]

    configure_logging("debug", json_output=True)  # e.g. on SIGHUP
    bound.debug("now.visible")
    assert [r["event"] for r in lines(capsys)] == ["now.visible"]


def test_stdlib_logging_is_rendered_the_same_way(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json_output=True)
    configure_logging("info", json_output=True)  # idempotent: still one handler
    logging.getLogger("paho.test").warning("socket %s closed", "x")
    [rec] = lines(capsys)
    assert rec["event"] == "socket x closed" and rec["logger"] == "paho.test"
    assert rec["level"] == "warning" and "timestamp" in rec


def test_exceptions_are_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json_output=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger().exception("apply.failed")
    [rec] = lines(capsys)
    assert rec["level"] == "error" and "RuntimeError: boom" in rec["exception"]


def test_console_renderer_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json_output=False)
    get_logger("agent.test").info("hello", password="hunter2")
    out = capsys.readouterr().out
    assert "hello" in out and "hunter2" not in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("verbose")
