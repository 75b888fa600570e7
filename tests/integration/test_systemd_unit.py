"""The systemd unit and the Prometheus rules, checked by the real systemd and promtool."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "trunkguard.service"
SYSUSERS = REPO / "systemd" / "trunkguard.sysusers.conf"
PROM = REPO / "configs" / "prometheus"
HOST_UNITS = next(
    (
        p
        for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
        if (p / "sysinit.target").exists()
    ),
    None,
)

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or HOST_UNITS is None,
    reason="systemd-analyze and the host's unit files are needed",
)
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing")


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def install_tree(root: Path, with_binary: bool = True) -> Path:
    """An image of an installed host under `root`: the distribution's units (for
    sysinit.target etc.), our unit, and the executables it references. verify then
    checks ExecStart= against this tree instead of the machine running the tests."""
    assert HOST_UNITS is not None
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/trunkguard.service")
    (root / "bin").mkdir()
    shutil.copy("/bin/kill", root / "bin/kill")  # ExecReload=
    if with_binary:
        exe = root / "usr/local/bin/trunkguard"
        exe.parent.mkdir(parents=True)
        exe.write_text("#!/bin/sh\nexit 0\n")  # stands in for the pip-installed entry point
        exe.chmod(0o755)
    return root


def unit_settings() -> dict[str, list[str]]:
    """Key -> values (systemd allows repeated keys, so configparser does not fit)."""
    out: dict[str, list[str]] = defaultdict(list)
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out[key.strip()].append(value.strip())
    return out


@needs_systemd
def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    root = install_tree(tmp_path / "root")
    res = run("systemd-analyze", "verify", f"--root={root}", "trunkguard.service")
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr  # no warnings (unknown keys, bad values)


@needs_systemd
def test_verify_really_checks_exec_start(tmp_path: Path) -> None:
    root = install_tree(tmp_path / "root", with_binary=False)
    res = run("systemd-analyze", "verify", f"--root={root}", "trunkguard.service")
    assert res.returncode != 0
    assert "/usr/local/bin/trunkguard" in res.stderr


@needs_systemd
def test_security_exposure_stays_low(tmp_path: Path) -> None:
    root = install_tree(tmp_path / "root")
    # --threshold is the exposure x10: fail if the unit ever gets above 2.0.
    res = run(
        "systemd-analyze",
        "security",
        "--offline=yes",
        "--no-pager",
        "--threshold=20",
        f"--root={root}",
        "trunkguard.service",
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr


def test_unit_is_notify_with_watchdog_and_least_privilege() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["10"]
    assert s["ExecStart"] == ["/usr/local/bin/trunkguard run -c /etc/trunkguard/trunkguard.yaml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["KillSignal"] == ["SIGTERM"] and s["Restart"] == ["on-failure"]
    assert s["User"] == ["trunkguard"] and s["Group"] == ["trunkguard"]
    assert s["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert s["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert set(s["RestrictAddressFamilies"][0].split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }
    for key in ("StateDirectory", "RuntimeDirectory", "ConfigurationDirectory"):
        assert s[key] == ["trunkguard"]
    for key in (
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "LockPersonality",
    ):
        assert s[key] == ["yes"], key
    assert s["SystemCallArchitectures"] == ["native"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_creates_the_service_account(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    res = run("systemd-sysusers", f"--root={tmp_path}", SYSUSERS)
    assert res.returncode == 0, res.stderr
    user = next(
        line
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
        if line.startswith("trunkguard:")
    )
    fields = user.split(":")
    assert fields[4:6] == ["trunkguard agent", "/var/lib/trunkguard"]
    assert fields[6].endswith("nologin")
    assert 0 < int(fields[2]) < 1000  # a system account


@needs_promtool
def test_prometheus_rules_check() -> None:
    res = run("promtool", "check", "rules", "trunkguard.rules.yml", cwd=PROM)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 22 rules found" in res.stdout


@needs_promtool
def test_prometheus_rules_unit_tests() -> None:
    res = run("promtool", "test", "rules", "trunkguard.rules.test.yml", cwd=PROM)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    rules = yaml.safe_load((PROM / "trunkguard.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "trunkguard.rules.test.yml").read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts == firing == silent
