"""Config for links, sensors and site evacuation: shapes, references, one-line problems."""

from __future__ import annotations

import pytest

from trunkguard.config import ConfigError, parse_config
from trunkguard.core.ids import parse_target as T
from trunkguard.core.site import AllOf, AnyOf, Match

SITE = """\
site: dc1
node: sbc1
mqtt: {host: 127.0.0.1}
trunks:
  local-a: {uri: "sip:192.0.2.1", depends_on: [link:uplink-a]}
  remote-b: {uri: "sip:198.51.100.1"}
links:
  uplink-a: {interface: eth1, gateway: 192.0.2.254, up_hold: 3s}
sensors:
  room-a: {hwmon: {chip: nct6775, label: SYSTIN}, warn: 27, critical: 32, unit: "°C"}
  room-b: {mqtt: {topic: bms/room-b, field: data.temp}, warn: 27, critical: 32}
  room-c: {command: {argv: [/usr/local/bin/room-c]}, warn: 27, critical: 32}
  chiller: {kind: bool, mqtt: {topic: bms/chiller/running}, critical_when: false}
evacuation:
  hold: 10m
  return: manual
  when:
    any_of:
      - {sensors: [room-a, room-b, room-c], is: critical}
      - {sensors: [room-a, room-b, room-c], critical_within: 10m}
      - all_of:
          - {sensors: [chiller], is: critical}
          - {sensors: [room-a, room-b, room-c], is: warn, at_least: 2}
      - {targets: [link:uplink-a, trunk:local-a], is: down, at_least: all}
routes:
  pstn:
    paths:
      - {name: local, requires: [trunk:local-a, link:uplink-a]}
      - {name: dr-site, requires: [trunk:remote-b], remote: true}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    return e.value.problems


def test_site_config_builds_the_core_inputs() -> None:
    cfg = parse_config(SITE)
    inp = cfg.core_spec()
    assert inp.links[T("link:uplink-a")].up_hold == 3.0
    assert inp.links[T("link:uplink-a")].down_hold == 0.0
    depends = {t: ts.depends_on for t, ts in inp.trunks.items() if ts.depends_on}
    assert depends == {T("trunk:local-a"): (T("link:uplink-a"),)}
    assert inp.sensors["chiller"].critical_when is False
    assert inp.sensors["room-a"].unit == "°C"
    assert inp.site.hold == 600.0 and inp.site.return_mode == "manual"
    rule = inp.site.rule
    assert isinstance(rule, AnyOf) and len(rule.items) == 4
    assert rule.items[0] == Match(("room-a", "room-b", "room-c"), (), "critical", 1, None)
    assert rule.items[1].critical_within == 600.0  # type: ignore[union-attr]
    both = rule.items[2]
    assert isinstance(both, AllOf) and both.items[1].at_least == 2  # type: ignore[union-attr]
    assert rule.items[3].at_least is None  # type: ignore[union-attr]
    plans = {n: sc.plan(n) for n, sc in cfg.sensors.items()}
    assert plans["room-b"].source.field == "data.temp"  # type: ignore[attr-defined]
    assert cfg.links["uplink-a"].spec("uplink-a").gateway == "192.0.2.254"


@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        ("depends_on: [link:uplink-a]", "depends_on: [link:nope]", "trunks.local-a.depends_on[0]"),
        ("is: critical}\n", "is: hot}\n", "evacuation.when.any_of[0]: is must be one of"),
        ("{sensors: [chiller], is: critical}", "{sensors: [nope], is: critical}", "unknown sensor"),
        ("link:uplink-a, trunk:local-a]", "link:uplink-a, trunk:x]", "unknown target 'trunk:x'"),
        ("warn: 27, critical: 32, unit", "warn: 33, critical: 32, unit", "warn must be below"),
        ("critical_when: false", "critical: 3", "bool sensors use warn_when"),
        ("{chip: nct6775, label: SYSTIN}", "{chip: nct6775}", "set label"),
        ("[/usr/local/bin/room-c]", "[room-c]", "absolute path"),
        ("topic: bms/room-b,", "topic: bms/+/temp,", "no wildcards"),
        ("interface: eth1", "interface: a-very-long-interface-name", "bad interface name"),
        ("is: warn, at_least: 2", "is: warn, at_least: 4", "at_least 4 is more than the 3"),
        ("remote: true", "remote: false", "no route group has a path with remote: true"),
        ("{sensors: [chiller], is: critical}", "{sensors: [chiller]}", "needs 'is'"),
        ("room-c: {command", "room-c: {thermal: {type: x}, command", "exactly one source"),
    ],
)
def test_bad_site_config_is_reported_with_its_key(old: str, new: str, want: str) -> None:
    assert old in SITE
    found = problems(SITE.replace(old, new, 1))
    assert any(want in p for p in found), found
    assert all("\n" not in p for p in found)


def test_mqtt_sensor_needs_the_mqtt_section() -> None:
    found = problems(SITE.replace("mqtt: {host: 127.0.0.1}\n", ""))
    assert any(p.startswith("sensors.room-b.mqtt: an mqtt sensor needs") for p in found), found


def test_stale_after_must_outlive_the_poll_interval() -> None:
    text = SITE.replace("label: SYSTIN}", "label: SYSTIN}, interval: 1m")
    assert any("stale_after must be longer than interval" in p for p in problems(text))
