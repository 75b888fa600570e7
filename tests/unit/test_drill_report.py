"""Drill reports: Markdown and HTML from a report dict, escaped; the drill command's
wire form."""

from __future__ import annotations

import pytest

from trunkguard.commands import CommandError, Drill, parse, request
from trunkguard.drill_report import html, markdown

REPORT = {
    "id": "20261128T100000-abcd",
    "scenario": "carrier",
    "group": "out<bound>",
    "original": "carrier-a",
    "new": "carrier-b",
    "routing_after": "carrier-a",
    "left_as_found": True,
    "inject": "trunk:carrier-a in maintenance (drill)",
    "result": "passed",
    "phases": {"decision": 0.0, "applied": 0.009, "restored": 1.1, "total": 2.2},
    "calls": {
        "new_path": {"path": "carrier-b", "ok": True, "reason": "<b>ok</b>", "answered_s": 0.003}
    },
    "manual_s": 240.0,
    "settings": {"probe": "every 1s", "group": "failback auto, hold <30s>"},
}


def test_markdown_has_the_timings_calls_and_the_manual_comparison() -> None:
    md = markdown(REPORT)
    assert "| routing applied and read back | 0.009 s |" in md
    assert "| synthetic call on the new path | - |" in md  # not measured: shown as such
    assert "4 min by hand, 2.2 s here (109 times faster)" in md
    assert "- group: failback auto, hold <30s>" in md
    assert "evacuation rule fired" not in md  # a carrier drill has no rule to wait for
    cooling = markdown({**REPORT, "phases": {**REPORT["phases"], "detected": 1.75}})
    assert "| evacuation rule fired | 1.750 s |" in cooling


def test_html_is_self_contained_and_escaped() -> None:
    page = html(REPORT)
    assert "out&lt;bound&gt;" in page and "<bound>" not in page
    assert "&lt;b&gt;ok&lt;/b&gt;" in page
    assert "<th>group</th><td>failback auto, hold &lt;30s&gt;</td>" in page
    assert "<script" not in page and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    assert page.count("<rect") == 4


def test_the_drill_command_round_trips_and_refuses_bad_arguments() -> None:
    d = Drill("carrier", "outbound", True)
    assert parse(request(d)) == d
    assert parse({"cmd": "drill", "scenario": "carrier"}) == Drill("carrier")
    for bad in (
        {"cmd": "drill"},
        {"cmd": "drill", "scenario": "x", "dry_run": "yes"},
        {"cmd": "drill", "scenario": "x", "group": ""},
    ):
        with pytest.raises(CommandError):
            parse(bad)
