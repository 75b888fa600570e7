"""Scheduled drills: maintenance windows (days, over midnight), when an entry is due,
and the config's one-line errors."""

import datetime as dt

import pytest

from trunkguard.config import ConfigError, parse_config
from trunkguard.features.drills import ScheduledDrill, Window, due

SUN_0300 = dt.datetime(2026, 11, 29, 3, 0)  # a Sunday


@pytest.mark.parametrize(
    ("window", "when", "inside"),
    [
        ("sun 02:00-04:00", SUN_0300, True),
        ("sun 02:00-04:00", SUN_0300.replace(hour=4), False),  # the end is excluded
        ("sat 02:00-04:00", SUN_0300, False),
        ("mon-fri 02:00-04:00", SUN_0300, False),
        ("fri-mon 02:00-04:00", SUN_0300, True),  # a range over the week's end
        ("sat,sun 02:00-04:00", SUN_0300, True),
        ("02:00-04:00", SUN_0300, True),  # every day
        ("sat 23:00-04:00", SUN_0300, True),  # Saturday night into Sunday
        ("sun 23:00-04:00", SUN_0300, False),  # that one starts Sunday evening
        ("sun 23:00-04:00", SUN_0300.replace(hour=23, minute=30), True),
    ],
)
def test_window(window: str, when: dt.datetime, inside: bool) -> None:
    assert (when in Window(window)) is inside


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("sunday 02:00-04:00", "bad day 'sunday'"),
        ("sun 2:00-04:00", "bad window"),
        ("sun 25:00-04:00", "bad time of day"),
        ("sun 02:00-02:00", "is empty"),
    ],
)
def test_bad_window(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        Window(text)


def test_due_needs_every_to_have_passed_and_the_window() -> None:
    e = ScheduledDrill(scenario="carrier", every="30d", window="sun 02:00-04:00")
    now = round(SUN_0300.timestamp())
    assert due(e, now - 31 * 86400, now)
    assert not due(e, now - 29 * 86400, now)
    assert not due(e, now - 31 * 86400, now + 3600)  # 04:00: the window has closed
    anytime = ScheduledDrill(scenario="site", every="1h")
    assert due(anytime, now - 3600, now) and not due(anytime, now - 3599, now)


def test_config_errors_are_one_line_with_the_key() -> None:
    text = """\
site: s
node: n
routes:
  out:
    paths:
      - {name: a}
drills:
  schedule:
    - {scenario: carrier, group: nope, every: 30d}
    - {scenario: flood, every: 1d}
    - {scenario: site, every: 1d, window: "someday"}
"""
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    problems = "\n".join(e.value.problems)
    assert "drills.schedule[1].scenario: Input should be 'carrier'" in problems
    assert "drills.schedule[2].window: bad window 'someday'" in problems
    assert all("\n" not in p for p in e.value.problems)
    # Once the section is well-formed, its references are checked.
    good = text.split("    - {scenario: flood")[0]
    with pytest.raises(ConfigError) as e:
        parse_config(good)
    assert e.value.problems == ["drills.schedule[0].group: unknown route group 'nope' (line 9)"]
