"""The read-only status page (GET / on the metrics listener), in the spirit of HAProxy's.

Pure: it renders the same snapshot `trunkguard status --json` shows, plus the last
events. Server-rendered, no script and no external asset (these hosts often have no
internet), refreshed by itself. Every value is escaped: trunk names come from the
config, reasons and peer data from the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

REFRESH_S = 5
CSS = """
body{font:13px/1.35 system-ui,sans-serif;margin:1em;color:#222;background:#fafafa}
h1{font-size:18px;margin:0 0 .3em}h2{font-size:14px;margin:1.2em 0 .3em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#e8e8e8}.meta{color:#666}
.up,.ok,.normal,.idle{background:#d6f5d6}.down,.critical,.alarm,.active{background:#f8c8c8}
.unknown,.stale,.pending,.releasing{background:#eee}.warn,.maintenance,.evacuating{background:#fbe7b0}
"""
Json = Mapping[str, Any]


def _e(v: object) -> str:
    return escape("-" if v is None else str(v), quote=True)


def _state(s: object) -> str:
    word = _e(s)
    return f'<td class="{word}">{word}</td>'


def _table(title: str, head: Sequence[str], rows: Iterable[str]) -> str:
    body = "".join(rows)
    if not body:
        return ""
    cols = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<h2>{_e(title)}</h2><table><tr>{cols}</tr>{body}</table>"


def render(s: Json, recent: Sequence[Json]) -> str:
    """The page for one snapshot (views.snapshot) and the recent events, newest first."""
    title = f"trunkguard {s.get('site')}/{s.get('node')}"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">version {_e(s.get("version"))} · up {_e(s.get("uptime_s"))} s · '
        f"refreshes every {REFRESH_S} s</p>",
    ]
    if s.get("fenced"):
        parts.append(f'<p class="alarm">FENCED: {_e(s["fenced"])}</p>')
    parts += [f'<p class="alarm">ALARM: {_e(a)}</p>' for a in s.get("alarms") or ()]
    ev = s.get("evacuation") or {}
    if ev.get("state") == "evacuating":
        parts.append(f'<p class="evacuating">SITE EVACUATING: {_e(ev.get("reason"))}</p>')
    parts.append(
        _table(
            "Trunks",
            ("trunk", "state", "since", "RTT ms", "code", "reason"),
            (
                f"<tr><td>{_e(n)}</td>{_state(t.get('state'))}<td>{_e(t.get('since'))}</td>"
                f"<td>{_e(t.get('last_rtt_ms'))}</td><td>{_e(t.get('last_code'))}</td>"
                f"<td>{_e(t.get('reason'))}</td></tr>"
                for n, t in (s.get("targets") or {}).items()
            ),
        )
    )
    parts.append(
        _table(
            "Links",
            ("link", "state", "since", "kernel", "reason"),
            (
                f"<tr><td>{_e(n)}</td>{_state(t.get('state'))}<td>{_e(t.get('since'))}</td>"
                f"<td>{_e(t.get('kernel'))}</td><td>{_e(t.get('reason'))}</td></tr>"
                for n, t in (s.get("links") or {}).items()
            ),
        )
    )
    parts.append(
        _table(
            "Sensors",
            ("sensor", "state", "value", "trend /min", "critical in s", "reason"),
            (
                f"<tr><td>{_e(n)}</td>{_state(x.get('state'))}"
                f"<td>{_e(x.get('value'))} {_e(x.get('unit') or '')}</td>"
                f"<td>{_e(x.get('rate_per_minute'))}</td><td>{_e(x.get('time_to_critical_s'))}</td>"
                f"<td>{_e(x.get('reason'))}</td></tr>"
                for n, x in (s.get("sensors") or {}).items()
            ),
        )
    )
    parts.append(
        _table(
            "Route groups",
            ("group", "active", "paths", "flags"),
            (_route(g, r) for g, r in (s.get("routes") or {}).items()),
        )
    )
    parts.append(
        _table(
            "Incidents",
            ("opened", "state", "severity", "cause", "impact", "closed"),
            (
                f"<tr><td>{_e(i.get('opened'))}</td><td>{_e(i.get('state'))}</td>"
                f"<td>{_e(i.get('severity'))}</td><td>{_e(i.get('cause'))}</td>"
                f"<td>{_e(', '.join(f'{g}: {c}' for g, c in (i.get('impact') or {}).items()))}</td>"
                f"<td>{_e(i.get('closed'))}</td></tr>"
                for i in s.get("incidents") or ()
            ),
        )
    )
    takeovers = s.get("takeovers") or {}
    parts.append(
        _table(
            "Peer sites",
            ("site", "state", "since", "reason", "takeover", "takeover reason"),
            (
                f"<tr><td>{_e(n)}</td>{_state(p.get('state'))}<td>{_e(p.get('since'))}</td>"
                f"<td>{_e(p.get('reason'))}</td>"
                + (
                    _state(takeovers[n].get("state")) + f"<td>{_e(takeovers[n].get('reason'))}</td>"
                    if n in takeovers
                    else "<td>-</td><td></td>"
                )
                + "</tr>"
                for n, p in (s.get("peers") or {}).items()
            ),
        )
    )
    parts.append(
        _table(
            "Last events",
            ("at", "what", "change", "reason"),
            (
                f"<tr><td>{_e(x.get('at'))}</td><td>{_e(x.get('what'))}</td>"
                f"<td>{_e(x.get('change'))}</td><td>{_e(x.get('reason'))}</td></tr>"
                for x in recent
            ),
        )
    )
    parts.append("</body></html>")
    return "".join(parts)


def _route(group: str, r: Json) -> str:
    paths = []
    for p in r.get("paths") or []:
        mark = "✓" if p.get("qualifies") else "✗"
        extra = " (remote)" if p.get("remote") else ""
        extra += f" (serves {_e(p['serves'])})" if p.get("serves") else ""
        paths.append(f"{mark} {_e(p.get('name'))}{extra}")
    flags = [
        f
        for f, on in (
            ("NO PATH", r.get("alarm")),
            ("evacuated", r.get("evacuated")),
            ("took over", r.get("took_over")),
        )
        if on
    ]
    if r.get("pinned"):
        flags.append(f"pinned {r['pinned']}")
    cls = "alarm" if r.get("alarm") else "ok"
    return (
        f'<tr><td>{_e(group)}</td><td class="{cls}">{_e(r.get("active"))}</td>'
        f"<td>{'<br>'.join(paths)}</td><td>{_e(' · '.join(flags))}</td></tr>"
    )
