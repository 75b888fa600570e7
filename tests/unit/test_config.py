import subprocess
import sys
from pathlib import Path

import pytest

from trunkguard.config import ConfigError, load_config, parse_config, parse_duration
from trunkguard.features.trunks import probe_for

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
site: dc1
node: sbc1
trunks:
  carrier-a: {uri: "sip:192.0.2.1:5060"}
  carrier-b: {uri: "sip:198.51.100.1", ok_codes: [2xx, 403], fall: 2}
routes:
  outbound:
    hold: 10s
    paths:
      - name: a
        requires: [trunk:carrier-a]
        actions: {netlink: [{dst: 203.0.113.0/24, gateway: 192.0.2.1}]}
      - name: b
        requires: [trunk:carrier-b]
        actions: {netlink: [{dst: 203.0.113.0/24, gateway: 198.51.100.1}]}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    return e.value.problems


def test_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "configs/example.yaml")
    assert cfg.probe.fast_interval == 0.2
    assert probe_for(cfg, "carrier-b").ok_codes == ["2xx", 403]


def test_good_config_and_overrides() -> None:
    cfg = parse_config(GOOD)
    spec = cfg.core_spec()
    hp = {str(t): ts.params for t, ts in spec.trunks.items()}
    assert hp["trunk:carrier-b"].fall == 2 and hp["trunk:carrier-a"].fall == 3
    g = spec.groups[0]
    assert g.hold == 10.0 and [p.name for p in g.paths] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("2s", 2), ("1m", 60), ("1.5h", 5400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", [500, "500", "5 parsecs", True, "-1s"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_unknown_target_has_path_and_line() -> None:
    text = GOOD.replace("requires: [trunk:carrier-b]", "requires: [trunk:carier-b]")
    assert problems(text) == [
        "routes.outbound.paths[1].requires[0]: unknown target 'trunk:carier-b' (line 14)"
    ]


def test_every_problem_reported_with_lines() -> None:
    text = GOOD.replace("hold: 10s", "hold: 10").replace("site: dc1", "site: dc1\nsitte: x")
    text = text.replace('uri: "sip:192.0.2.1:5060"', 'uri: "http://x"')
    got = problems(text)
    assert any(p.startswith("sitte: unknown key (line 2)") for p in got), got
    assert any(p.startswith("trunks.carrier-a.uri: ") and "(line 5)" in p for p in got), got
    assert any(p.startswith("routes.outbound.hold: duration needs a unit") for p in got), got


def test_missing_key_and_duplicate_key() -> None:
    got = problems("node: x\nnode: y\n")
    assert "node: duplicate key (line 2)" in got
    assert any(p.startswith("site: missing required key") for p in got)


def test_paths_must_route_same_prefixes() -> None:
    text = GOOD.replace(
        "dst: 203.0.113.0/24, gateway: 198.51.100.1", "dst: 203.0.113.0/25, gateway: 198.51.100.1"
    )
    got = problems(text)
    assert got == [
        "routes.outbound.paths[1].actions.netlink: must route the same prefixes "
        "(dst/table/metric) as paths[0] (line 15)"
    ]


def test_yaml_syntax_error_is_one_line() -> None:
    got = problems("site: [unclosed\n")
    assert len(got) == 1 and "YAML syntax error" in got[0] and "line" in got[0]


def test_fast_interval_longer_than_interval() -> None:
    got = problems(GOOD.replace("trunks:", "probe: {interval: 1s, fast_interval: 2s}\ntrunks:"))
    assert any("fast_interval must not be longer than interval" in p for p in got)


def test_command_needs_absolute_program() -> None:
    text = GOOD.replace(
        "actions: {netlink: [{dst: 203.0.113.0/24, gateway: 192.0.2.1}]}",
        "actions: {command: {argv: [rm, -rf]}}",
    )
    got = problems(text)
    assert any("absolute path" in p for p in got), got


def test_check_config_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("trunk:carrier-b]", "trunk:carier-b]"))
    r = subprocess.run(
        [sys.executable, "-m", "trunkguard", "check-config", "-c", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"{bad}: routes.outbound.paths[1].requires[0]: unknown target 'trunk:carier-b' (line 14)"
    ]
    assert "Traceback" not in r.stderr
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "trunkguard",
            "check-config",
            "-c",
            str(ROOT / "configs/example.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "trunkguard", "check-config", "-c", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_route_family_mismatch_is_a_config_error() -> None:
    text = GOOD.replace("gateway: 192.0.2.1}", "gateway: 2001:db8::1}")
    got = problems(text)
    assert len(got) == 1 and got[0].startswith("routes.outbound.paths[0].actions.netlink[0]: ")
    assert "another family" in got[0] and "(line 12)" in got[0]


def test_one_route_in_two_groups_is_a_config_error() -> None:
    second = (
        "  inbound:\n    paths:\n      - name: x\n        requires: [trunk:carrier-a]\n"
        "        actions: {netlink: [{dst: 203.0.113.0/24, gateway: 192.0.2.1}]}\n"
    )
    got = problems(GOOD + second)
    assert got == [
        "routes.inbound.paths[0].actions.netlink: route 203.0.113.0/24 (table 254) is also "
        "steered by group outbound (line 20)"
    ]


def test_transports_tls_and_quorum(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    text = GOOD.replace(
        'carrier-b: {uri: "sip:198.51.100.1", ok_codes: [2xx, 403], fall: 2}',
        f'carrier-b: {{uri: "sips:carrier.test", healthy_when: all, tls: {{ca_file: {ca}}}}}\n'
        '  carrier-c: {uri: "sip:carrier.test;transport=tcp", healthy_when: 2}',
    )
    cfg = parse_config(text)
    q = {str(t): ts.quorum for t, ts in cfg.core_spec().trunks.items()}
    assert str(q["trunk:carrier-b"]) == "all" and q["trunk:carrier-c"].n == 2
    assert cfg.trunks["carrier-b"].tls.ca_file == str(ca)  # type: ignore[union-attr]
    bad = text.replace(str(ca), str(tmp_path / "nope.pem"))
    assert any(p.startswith("trunks.carrier-b.tls.ca_file: cannot read") for p in problems(bad))
    bad = text.replace(
        '"sip:carrier.test;transport=tcp", healthy_when: 2',
        '"sip:carrier.test;transport=tcp", tls: {verify: false}',
    )
    assert any("tls settings need a sips: URI" in p for p in problems(bad))
    bad = text.replace("healthy_when: 2", "healthy_when: most")
    assert any(p.startswith("trunks.carrier-c.healthy_when") for p in problems(bad))
