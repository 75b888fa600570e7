"""Every shipped alert is in the README's alert table, links its runbook section, and
that section exists with its four parts; the annotations point at it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_every_alert_has_its_runbook_and_its_readme_row() -> None:
    rules = yaml.safe_load((REPO / "configs/prometheus/trunkguard.rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    runbook = (REPO / "docs/runbook.md").read_text()
    readme = (REPO / "README.md").read_text()
    sections = dict(re.findall(r"^## (Trunkguard\w+)\n(.*?)(?=^## |\Z)", runbook, re.M | re.S))
    assert [a["alert"] for a in alerts] == list(sections)  # one each, in the rules' order
    for a in alerts:
        name, notes = a["alert"], a["annotations"]
        assert notes["runbook_url"].endswith(f"docs/runbook.md#{name.lower()}")
        assert len(notes["runbook"]) > 80
        for part in ("**What happened.**", "**What trunkguard already did.**",
                     "**What to check.**", "**How it ends.**"):  # fmt: skip
            assert part in sections[name], (name, part)
        assert f"| [{name}](docs/runbook.md#{name.lower()}) |" in readme
