"""A reading no working sensor can give is a read error, never a level: one forged or
corrupt value must not evacuate a site."""

from __future__ import annotations

import pytest

from trunkguard.config import ConfigError, parse_config
from trunkguard.features.sensors.source import ANY_UNIT, PLAUSIBLE, implausible

BASE = """\
site: dc1
node: sbc1
trunks: {{a: {{uri: "sip:192.0.2.1"}}}}
sensors:
  room:
    command: {{argv: [/bin/true]}}
    unit: "{unit}"
    warn: {warn}
    critical: 32
{extra}"""


@pytest.mark.parametrize(
    ("value", "unit", "bounds", "bad"),
    [
        (25.0, "°C", PLAUSIBLE["°C"], False),
        (1e28, "°C", PLAUSIBLE["°C"], True),
        (-273.0, "°C", PLAUSIBLE["°C"], True),
        (101.0, "%", PLAUSIBLE["%"], True),
        (1e12, "", ANY_UNIT, True),
        (True, "", ANY_UNIT, False),
    ],
)
def test_implausible(value: float, unit: str, bounds: tuple[float, float], bad: bool) -> None:
    why = implausible(value, bounds, unit)
    assert (why is not None) == bad
    if why:
        assert why.startswith("implausible reading") and unit in why


def test_defaults_come_from_the_unit_and_may_be_set() -> None:
    cfg = parse_config(BASE.format(unit="°C", warn=27, extra=""))
    assert cfg.sensors["room"].plan("room").plausible == PLAUSIBLE["°C"]
    cfg = parse_config(BASE.format(unit="°C", warn=27, extra="    plausible: [0, 60]\n"))
    assert cfg.sensors["room"].plan("room").plausible == (0, 60)
    cfg = parse_config(BASE.format(unit="lux", warn=27, extra=""))
    assert cfg.sensors["room"].plan("room").plausible == ANY_UNIT


@pytest.mark.parametrize(
    ("warn", "extra", "want"),
    [
        (27, "    plausible: [60, 0]\n", "lowest first"),
        (27, "    plausible: [0, 30]\n", "critical 32 is outside plausible 0 to 30"),
        (-100, "", "warn -100 is outside plausible -60 to 200"),
    ],
)
def test_thresholds_must_be_plausible(warn: int, extra: str, want: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(BASE.format(unit="°C", warn=warn, extra=extra))
    assert any(want in p for p in e.value.problems), e.value.problems
