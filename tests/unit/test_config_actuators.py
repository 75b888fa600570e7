"""Config for the Kamailio dispatcher and template actuators."""

from __future__ import annotations

from pathlib import Path

import pytest

from trunkguard.config import ConfigError, parse_config
from trunkguard.core.ids import Paths
from trunkguard.features import actuators as build_actuators
from trunkguard.features.templates import template_context


def text(tmp: Path, template: str = "{{ routes.pstn.vars.host }}\n") -> str:
    (tmp / "t.j2").write_text(template)
    return f"""\
site: dc1
node: sbc1
trunks:
  a: {{uri: "sip:192.0.2.1"}}
  b: {{uri: "sip:198.51.100.1"}}
actuators:
  kamailio: {{rpc: "unix:/run/kamailio/kamailio_rpc.sock", timeout: 1s}}
  templates:
    - {{name: pbx, template: {tmp}/t.j2, output: {tmp}/out.conf, reload: [/bin/true], mode: "0640"}}
routes:
  pstn:
    paths:
      - name: a
        requires: [trunk:a]
        vars: {{host: 192.0.2.1}}
        actions: {{kamailio: {{setid: 1, active: ["sip:192.0.2.1:5060"]}}}}
      - name: b
        requires: [trunk:b]
        vars: {{host: 198.51.100.1}}
        actions: {{kamailio: {{setid: 1, active: ["sip:198.51.100.1:5060"]}}}}
"""


def problems(t: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(t)
    return e.value.problems


def test_actuators_are_built_with_their_settings(tmp_path: Path) -> None:
    cfg = parse_config(text(tmp_path))
    acts = build_actuators(cfg, {})
    assert [a.name for a in acts] == ["kamailio", "template:pbx"]
    assert cfg.actuators.templates[0].mode == 0o640
    ctx = template_context(cfg)({"pstn": Paths.parse("b")})
    assert ctx["routes"] == {
        "pstn": {"path": "b", "paths": ["b"], "vars": {"host": "198.51.100.1"}, "remote": False}
    }
    assert ctx["site"] == "dc1"


@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        ('rpc: "unix:', 'rpc: "ftp:', "actuators.kamailio.rpc"),
        ('active: ["sip:198.51.100.1:5060"]', 'active: ["sip:192.0.2.1:5060 x"]', "sip: URI"),
        ('mode: "0640"', "mode: 640", "mode must be octal"),
        ("reload: [/bin/true]", "reload: [bin/true]", "absolute path"),
        ("output: ", "output: /nonexistent-dir/", "does not exist"),
    ],
)
def test_bad_actuator_config(tmp_path: Path, old: str, new: str, want: str) -> None:
    t = text(tmp_path)
    assert old in t
    found = problems(t.replace(old, new, 1))
    assert any(want in p for p in found), found


def test_kamailio_actions_need_the_rpc_setting(tmp_path: Path) -> None:
    t = text(tmp_path).replace(
        '  kamailio: {rpc: "unix:/run/kamailio/kamailio_rpc.sock", timeout: 1s}\n', ""
    )
    assert any("set actuators.kamailio.rpc" in p for p in problems(t))


def test_template_syntax_error_is_reported_with_its_line(tmp_path: Path) -> None:
    found = problems(text(tmp_path, "ok\n{% if %}\n"))
    assert any("actuators.templates[0].template" in p and ":2:" in p for p in found), found


def test_one_destination_in_two_groups_is_refused(tmp_path: Path) -> None:
    t = (
        text(tmp_path)
        + """\
  other:
    paths:
      - name: x
        actions: {kamailio: {setid: 1, active: ["sip:192.0.2.1:5060"]}}
"""
    )
    assert any("also steered by group pstn" in p for p in problems(t))


POLICY = """\
site: dc1
node: sbc1
trunks:
  a: {uri: "sip:192.0.2.1"}
  b: {uri: "sip:198.51.100.1"}
routes:
  spread:
    mode: multipath
    paths:
      - name: a
        requires: [trunk:a]
        actions: {netlink: [{dst: 203.0.113.0/24, gateway: 192.0.2.1, weight: 3}]}
      - name: b
        requires: [trunk:b]
        actions: {netlink: [{dst: 203.0.113.0/24, gateway: 198.51.100.1}]}
  media:
    paths:
      - name: a
        requires: [trunk:a]
        actions:
          rules: [{priority: 1000, from: 192.0.2.0/24, table: 100}]
          netlink: [{dst: default, gateway: 192.0.2.1, table: 100}]
      - name: b
        requires: [trunk:b]
        actions:
          rules: [{priority: 1000, from: 192.0.2.0/24, table: 200}]
          netlink: [{dst: default, gateway: 198.51.100.1, table: 200}]
"""


def test_multipath_and_policy_rules_are_built() -> None:
    cfg = parse_config(POLICY)
    spread, media = cfg.core_spec().groups
    assert spread.mode == "multipath" and media.mode == "failover"
    assert cfg.routes["spread"].paths[0].actions.netlink[0].spec().weight == 3
    rule = cfg.routes["media"].paths[1].actions.rules[0].spec()
    assert (rule.priority, rule.table, rule.src) == (1000, 200, "192.0.2.0/24")
    assert [a.name for a in build_actuators(cfg, {})] == ["netlink"]


@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        ("weight: 3", "weight: 300", "less than or equal to 256"),
        ("priority: 1000, from: 192.0.2.0/24, table: 200", "priority: 32766, table: 200", "32765"),
        ("from: 192.0.2.0/24, table: 100", "from: 192.0.2.1/24, table: 100", "rules[0]"),
        (
            "requires: [trunk:b]\n        actions: {netlink",
            "requires: [trunk:b]\n        actions: {command: {argv: [/bin/true]}, netlink",
            "multipath group steers kernel routes only",
        ),
    ],
)
def test_bad_policy_config(old: str, new: str, want: str) -> None:
    assert old in POLICY
    found = problems(POLICY.replace(old, new, 1))
    assert any(want in p for p in found), found
