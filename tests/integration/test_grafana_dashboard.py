"""The Grafana dashboard (configs/grafana/trunkguard.json): its structure, every PromQL
expression parsed by a real Prometheus (Debian's package), and every metric it names
one that the agent really exports (read from Metrics' own /metrics rendering)."""

from __future__ import annotations

import json
import re
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lib.prometheus import REPO, Server, prometheus
from trunkguard.obs.metrics import Metrics

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "configs" / "grafana" / "trunkguard.json"

# Grafana's built-in variables, as a typical dashboard would expand them.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
# A dashboard variable (multi-value, "All" = .*) as Grafana substitutes it in a regex matcher.
VARIABLE_VALUE = ".*"
DATASOURCE_UIDS = {"${datasource}", "$datasource", "${DS_PROMETHEUS}"}
# $name, ${name}, ${name:format}, [[name]], [[name:format]]
VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")
METRIC = re.compile(r"\b(?:trunkguard|process)_[a-z0-9_]+\b")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*\S)\s*,\s*)?(\w+)\s*\)\s*$", re.S)
QUERY_RESULT = re.compile(r"^\s*query_result\((.*)\)\s*$", re.S)
# Metric names Prometheus itself attaches to every target.
SCRAPE_METRICS = {"up"}

Expr = tuple[str, str]  # (where in the dashboard, PromQL)


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def panels(dash: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Every panel with the row that nests it (panels of a collapsed row live inside it)."""
    for p in dash.get("panels", []):
        yield p, None
        for q in p.get("panels", []) if p.get("type") == "row" else []:
            yield q, p


def _name(p: dict[str, Any]) -> str:
    return f"panel {p.get('id')} {p.get('title')!r}"


def _overlaps(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def _datasource_ok(ds: Any) -> bool:
    return (
        isinstance(ds, dict) and ds.get("type") == "prometheus" and ds.get("uid") in DATASOURCE_UIDS
    )


def structure_problems(dash: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        out.append(f"schemaVersion {dash.get('schemaVersion')!r}: Grafana 10/11 need >= 36")
    for key in ("uid", "title"):
        if not dash.get(key):
            out.append(f"dashboard has no {key}")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    if "instance" not in variables:
        out.append("no template variable 'instance'")
    if not any(v.get("type") == "datasource" for v in variables.values()) and not any(
        i.get("pluginId") == "prometheus" for i in dash.get("__inputs", [])
    ):
        out.append("neither a datasource template variable nor a DS_PROMETHEUS input")

    ids: dict[Any, str] = {}
    # Top-level panels share one grid; a collapsed row's panels are laid out among
    # themselves, below their row, when it is expanded.
    grids: dict[int, list[tuple[str, dict[str, int]]]] = {}
    for p, parent in panels(dash):
        name = _name(p)
        if p.get("id") in ids:
            out.append(f"{name}: id also used by {ids[p.get('id')]}")
        ids[p.get("id")] = name
        pos = p.get("gridPos", {})
        if not all(isinstance(pos.get(k), int) for k in "xywh"):
            out.append(f"{name}: gridPos {pos!r} is incomplete")
            continue
        if pos["x"] < 0 or pos["y"] < 0 or pos["w"] < 1 or pos["h"] < 1 or pos["x"] + pos["w"] > 24:
            out.append(f"{name}: gridPos {pos!r} is outside the 24-column grid")
        if parent is not None:
            if not parent.get("collapsed"):
                out.append(f"{name}: nested in expanded row {parent.get('title')!r}")
            if pos["y"] <= parent["gridPos"]["y"]:
                out.append(f"{name}: above its row {parent.get('title')!r}")
        grid = grids.setdefault(id(parent), [])
        for other, opos in grid:
            if _overlaps(pos, opos):
                out.append(f"{name}: gridPos {pos} overlaps {other} {opos}")
        grid.append((name, pos))
        if p.get("type") == "row":
            continue
        if not p.get("title") or not p.get("description"):
            out.append(f"{name}: needs a title and a description")
        if not _datasource_ok(p.get("datasource")):
            out.append(f"{name}: datasource {p.get('datasource')!r} is not the Prometheus one")
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            out.append(f"{name}: no unit")
        targets = p.get("targets") or []
        if not targets:
            out.append(f"{name}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            out.append(f"{name}: duplicate refIds {refs}")
        for t in targets:
            if not str(t.get("expr", "")).strip():
                out.append(f"{name} target {t.get('refId')}: empty expr")
            if "datasource" in t and not _datasource_ok(t["datasource"]):
                out.append(f"{name} target {t.get('refId')}: datasource {t['datasource']!r}")
    return out


def expressions(dash: dict[str, Any]) -> list[Expr]:
    """Every PromQL expression: panel targets, annotations, template variable queries
    (for label_values(selector, label), the selector)."""
    out: list[Expr] = []
    for p, _ in panels(dash):
        for t in p.get("targets", []):
            if str(t.get("expr", "")).strip():
                out.append((f"{_name(p)} target {t.get('refId')}", t["expr"]))
    for a in dash.get("annotations", {}).get("list", []):
        expr = a.get("expr") or (a.get("target") or {}).get("expr")
        if expr:
            out.append((f"annotation {a.get('name')!r}", expr))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else str(q or "")
        where = f"variable {v.get('name')!r}"
        if m := LABEL_VALUES.match(q):
            if m.group(1):
                out.append((where, m.group(1)))
        elif m := QUERY_RESULT.match(q):
            out.append((where, m.group(1)))
        elif q.strip() and not re.match(r"^\s*(label_names|metrics)\(", q):
            out.append((where, q))
    return out


def substitute(expr: str, variables: set[str]) -> tuple[str, list[str]]:
    """The expression with Grafana's variables expanded, and the unknown ones."""
    unknown: list[str] = []

    def one(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        if name in BUILTINS:
            return BUILTINS[name]
        if name in variables:
            return VARIABLE_VALUE
        unknown.append(name)
        return m.group(0)

    return VARIABLE.sub(one, expr), unknown


def exported_metric_names() -> set[str]:
    """Sample names the agent's /metrics can carry. Read from what Metrics renders, not
    just its registry: the per-target RTT histogram is streamed beside the registry."""
    _, body = Metrics().render({})
    text = b"".join(body).decode()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
    }
    names = set(SCRAPE_METRICS)
    for fam in text_string_to_metric_families(text):
        base = fam.name.removesuffix("_total") if fam.type == "counter" else fam.name
        names.update(base + s for s in suffixes.get(fam.type, ("",)))
        names.update(s.name for s in fam.samples)
    return names


def _flat(expr: str) -> str:
    return " ".join(expr.split())


def metric_problems(exprs: list[Expr], exported: set[str]) -> list[str]:
    return [
        f"{where}: unknown metric {name} in: {_flat(expr)}"
        for where, expr in exprs
        for name in sorted(set(METRIC.findall(expr)))
        if name not in exported
    ]


def promql_error(server: Server, expr: str) -> str | None:
    """Prometheus's error for an instant query of expr, None when it parses."""
    try:
        doc = server.get("/api/v1/query", query=expr)
    except urllib.error.HTTPError as e:  # 400 bad_data for a parse error
        try:
            return str(json.loads(e.read()).get("error", e))
        except ValueError:
            return f"HTTP {e.code}"
    return None if doc.get("status") == "success" else str(doc.get("error", doc))


def query_problems(dash: dict[str, Any], server: Server, exported: set[str]) -> list[str]:
    variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    exprs = expressions(dash)
    out: list[str] = []
    for where, expr in exprs:
        concrete, unknown = substitute(expr, variables)
        out += [f"{where}: undefined variable ${u} in: {_flat(expr)}" for u in unknown]
        if error := promql_error(server, concrete):
            out.append(f"{where}: {_flat(concrete)}  -->  {error}")
    return out + metric_problems(exprs, exported)


def report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One Prometheus (no targets, no rules) for every query of this module."""
    with prometheus(tmp_path_factory.mktemp("grafana"), targets=[], rules=None) as server:
        yield server


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_metric_names()


def test_dashboard_structure() -> None:
    dash = load()
    assert not (problems := structure_problems(dash)), report(problems)
    kinds = {p["type"] for p, _ in panels(dash)}
    assert {"timeseries", "state-timeline", "stat", "table", "row"} <= kinds


def test_dashboard_queries_parse_and_name_exported_metrics(
    prom: Server, exported: set[str]
) -> None:
    dash = load()
    exprs = expressions(dash)
    assert len(exprs) > 50
    assert any(where.startswith("variable 'instance'") for where, _ in exprs)
    assert not (problems := query_problems(dash, prom, exported)), report(problems)
    # The rate windows follow the scrape interval, as Grafana recommends.
    fixed = [
        f"{w}: {_flat(e)}"
        for w, e in exprs
        if re.search(r"\b(rate|increase)\(", e)
        and re.search(r"\[\d+[smhd]\]", e)  # a hard-coded window
    ]
    assert not fixed, report(fixed)


def test_dashboard_check_reports_bad_expression_and_unknown_metric(
    prom: Server, exported: set[str]
) -> None:
    ds = {"type": "prometheus", "uid": "${datasource}"}
    broken = 'sum by (group (rate(trunkguard_failovers_total{instance=~"$instance"}[5m]))'
    made_up = "trunkguard_made_up_seconds_bucket"
    dash = {
        "templating": {"list": [{"name": "instance", "type": "query", "query": "up"}]},
        "panels": [
            {
                "type": "row",
                "id": 1,
                "collapsed": True,
                "panels": [
                    {
                        "id": 2,
                        "title": "nested",
                        "datasource": ds,
                        "targets": [
                            {"refId": "A", "expr": broken},
                            {"refId": "B", "expr": f"rate({made_up}[$__rate_interval])"},
                            {"refId": "C", "expr": "trunkguard_fenced{site=~'$nosuch'}"},
                        ],
                    }
                ],
            }
        ],
    }
    problems = query_problems(dash, prom, exported)
    text = report(problems)
    assert len(problems) == 3, text
    parse = [p for p in problems if "target A" in p]
    assert (
        len(parse) == 1 and "parse error" in parse[0] and "trunkguard_failovers_total" in (parse[0])
    ), text
    assert any(f"unknown metric {made_up}" in p for p in problems), text
    assert any("undefined variable $nosuch" in p for p in problems), text
    assert "trunkguard_fenced" in exported and "trunkguard_failovers_total" in exported
    assert "trunkguard_sip_options_rtt_seconds_bucket" in exported
    assert "trunkguard_fenced_total" not in exported

    # And the structure check: overlapping panels, no datasource, no target.
    bad = load()
    first, second = [p for p, _ in panels(bad) if p["type"] != "row"][:2]
    second["gridPos"] = dict(first["gridPos"])
    second["id"] = first["id"]
    del first["datasource"]
    first["targets"] = []
    problems = structure_problems(bad)
    text = report(problems)
    assert any("overlaps" in p for p in problems), text
    assert any("id also used" in p for p in problems), text
    assert any("no targets" in p for p in problems), text
    assert any("datasource None" in p for p in problems), text
