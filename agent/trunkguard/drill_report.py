"""A drill's report for people: Markdown (the change ticket) and a self-contained HTML
page with the timeline drawn (the auditor). Pure functions of the report dict; every
value is escaped in the HTML."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

PHASES = (
    ("detected", "evacuation rule fired"),
    ("decision", "failover decided"),
    ("applied", "routing applied and read back"),
    ("call_new_path", "synthetic call on the new path"),
    ("restored", "routing back on the original path"),
    ("total", "drill complete"),
)


def _s(v: object) -> str:
    return "-" if not isinstance(v, int | float) else f"{v:.3f} s"


def markdown(r: Mapping[str, Any]) -> str:
    lines = [
        f"# Drill {r['id']}: {r['scenario']} on route group {r['group']}",
        "",
        f"- Result: **{r.get('result')}**" + (f" ({r['aborted']})" if r.get("aborted") else ""),
        f"- Started: {r.get('started', '-')}",
        f"- Injected: {r['inject']}",
        f"- Routing: {r['original']} → {r.get('new', '-')} → {r.get('routing_after', '-')}"
        f" (left as found: {r.get('left_as_found')})",
        "",
        "| phase | since injection |",
        "|---|---|",
    ]
    phases = r.get("phases") or {}
    lines += [
        f"| {label} | {_s(phases.get(key))} |"
        for key, label in PHASES
        if key != "detected" or key in phases  # only a cooling drill waits for its rule
    ]
    calls = r.get("calls") or {}
    if calls:
        lines += ["", "| synthetic call | path | result | answered in |", "|---|---|---|---|"]
        for key, c in calls.items():
            lines.append(f"| {key} | {c['path']} | {c['reason']} | {_s(c.get('answered_s'))} |")
    settings = r.get("settings") or {}
    if settings:
        lines += ["", "Settings:"] + [f"- {k}: {v}" for k, v in settings.items()]
    manual = r.get("manual_s")
    total = phases.get("total")
    if manual and isinstance(total, int | float):
        lines += [
            "",
            f"Compared with the manual drill: {manual / 60:g} min by hand, "
            f"{total:.1f} s here ({manual / max(total, 0.001):.0f} times faster).",
        ]
    return "\n".join(lines) + "\n"


def html(r: Mapping[str, Any]) -> str:
    def e(v: object) -> str:
        return escape("-" if v is None else str(v), quote=True)

    phases = r.get("phases") or {}
    total = max([v for v in phases.values() if isinstance(v, int | float)] + [0.001])
    bars = []
    for i, (key, label) in enumerate(PHASES):
        t = phases.get(key)
        if not isinstance(t, int | float):
            continue
        w = max(2.0, 500 * t / total)
        y = 10 + i * 28
        bars.append(
            f'<rect x="240" y="{y}" width="{w:.1f}" height="18" fill="#4a7"/>'
            f'<text x="0" y="{y + 14}">{e(label)}</text>'
            f'<text x="{245 + w:.1f}" y="{y + 14}">{t:.3f} s</text>'
        )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="860" height="{20 + 28 * len(PHASES)}" '
        f'font-family="sans-serif" font-size="12">{"".join(bars)}</svg>'
    )
    calls = "".join(
        f"<tr><td>{e(k)}</td><td>{e(c['path'])}</td><td>{e(c['reason'])}</td></tr>"
        for k, c in (r.get("calls") or {}).items()
    )
    settings = "".join(
        f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in (r.get("settings") or {}).items()
    )
    manual = r.get("manual_s")
    compare = ""
    if manual and isinstance(phases.get("total"), int | float):
        compare = f"<p>By hand: {manual / 60:g} min. Here: {phases['total']:.1f} s.</p>"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>Drill {e(r['id'])}</title><style>body{{font:14px sans-serif;margin:1em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>"
        f"</head><body><h1>Drill {e(r['id'])}: {e(r['scenario'])} on {e(r['group'])}</h1>"
        f"<p>Result: <b>{e(r.get('result'))}</b> {e(r.get('aborted') or '')}</p>"
        f"<p>Injected: {e(r['inject'])}. Routing: {e(r['original'])} → {e(r.get('new'))} → "
        f"{e(r.get('routing_after'))} (left as found: {e(r.get('left_as_found'))})</p>"
        f"<h2>Timeline</h2>{svg}{compare}"
        + (f"<h2>Synthetic calls</h2><table>{calls}</table>" if calls else "")
        + (f"<h2>Settings</h2><table>{settings}</table>" if settings else "")
        + "</body></html>"
    )
