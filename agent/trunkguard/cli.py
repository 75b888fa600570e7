"""`trunkguard` command line: every failure is one clear line and an exit code, no traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from trunkguard import __version__
from trunkguard.commands import CommandError
from trunkguard.config import DEFAULT_PATH, ConfigError, load_config, parse_duration
from trunkguard.control import request
from trunkguard.drills import SCENARIOS
from trunkguard.signing import Right

DRILL_WAIT = 180.0  # a whole drill, with its calls and every step's deadline


def _seconds(text: str) -> float:
    """CLI durations: '0.5' (seconds, like ping) or with a unit ('500ms')."""
    try:
        value = float(text)
    except ValueError:
        try:
            value = parse_duration(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trunkguard", description="SIP trunk failover agent")
    p.add_argument("--version", action="version", version=f"trunkguard {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "-c", "--config", default=DEFAULT_PATH, help=f"config file ({DEFAULT_PATH})"
        )

    def with_broker(sp: argparse.ArgumentParser) -> None:
        g = sp.add_argument_group("over MQTT")
        g.add_argument(
            "--broker", help="mqtt://HOST[:PORT], mqtts://HOST[:PORT] (TLS) or unix:///PATH"
        )
        g.add_argument("--ca-file", help="CA to verify the broker (mqtts)")
        g.add_argument("--username", help="broker account")
        g.add_argument("--password-file", help="the account's password, alone in a file")
        g.add_argument("--prefix", default="trunkguard", help="topic prefix (trunkguard)")

    def with_socket(sp: argparse.ArgumentParser) -> None:
        """The local socket, or with --site a signed command through the broker."""
        with_config(sp)
        sp.add_argument("--socket", help="control socket (default: from the config)")
        with_broker(sp)
        g = sp.add_argument_group("signed, to a site over MQTT (instead of the socket)")
        g.add_argument("--site", help="the site to command")
        g.add_argument("--node", help="one node of the site (default: every node)")
        g.add_argument("--key", help="private key file (from `trunkguard keygen`)")
        g.add_argument("--key-id", help="the key's name in the agents' config (file name)")
        g.add_argument("--timeout", type=_seconds, default=10.0, help="wait for results (10s)")

    sp = sub.add_parser("run", help="run the daemon in the foreground (systemd Type=notify)")
    with_config(sp)
    sp.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")

    sp = sub.add_parser("check-config", help="validate a config file")
    with_config(sp)

    sp = sub.add_parser("probe", help="send SIP OPTIONS like ping")
    sp.add_argument("uri", help="sip:HOST[:PORT]")
    sp.add_argument("-n", "--count", type=_count, default=4, help="probes to send, 0 = forever (4)")
    sp.add_argument(
        "-i", "--interval", type=_seconds, default=1.0, help="seconds between probes (1)"
    )
    sp.add_argument("-t", "--timeout", type=_seconds, default=2.0, help="per-probe deadline (2)")
    sp.add_argument("--ok-codes", default="2xx", help="comma list of alive codes (2xx)")
    sp.add_argument("--source", help="source address to send from")

    sp = sub.add_parser("status", help="show targets and routes of the running daemon")
    with_socket(sp)
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = sub.add_parser("failover", help="pin a route group to a path")
    with_socket(sp)
    sp.add_argument("group")
    sp.add_argument("path")

    sp = sub.add_parser("failback", help="release a pin and return to the preferred path now")
    with_socket(sp)
    sp.add_argument("group")

    sp = sub.add_parser(
        "maintenance",
        help="put a target in or out of maintenance; 'site on|off' forces or ends evacuation",
    )
    with_socket(sp)
    sp.add_argument("target", help="trunk:NAME, link:NAME (or just NAME), or site")
    sp.add_argument("mode", choices=["on", "off"])

    sp = sub.add_parser(
        "release", help="end the takeover of a peer site's calls now (they go back to it)"
    )
    with_socket(sp)
    sp.add_argument("peer", help="the peer site")

    sp = sub.add_parser("drill", help="rehearse a failure through the daemon, timed")
    with_socket(sp)
    sp.add_argument("scenario", choices=SCENARIOS)
    sp.add_argument("--group", help="the route group (default: the first with 2+ paths)")
    sp.add_argument("--dry-run", action="store_true", help="say what would happen, do nothing")
    sp.add_argument("--json", action="store_true", help="the report as JSON")
    sp.add_argument("--report-dir", help="also write the report as JSON, Markdown and HTML")

    sp = sub.add_parser("keygen", help="make a key pair for signed commands")
    sp.add_argument("--out", required=True, help="writes OUT.key (0600) and OUT.pub")

    sp = sub.add_parser("fleet", help="every site and node, from retained MQTT state")
    with_broker(sp)
    sp.add_argument("--site", help="only this site")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = sub.add_parser("lab", help="self-contained demo: two carriers, an outage, the timeline")
    sp.add_argument("--hold", type=_seconds, default=3.0, help="failback hold in the demo (3s)")
    sp.add_argument("--outage", type=_seconds, default=4.0, help="how long carrier A is dead (4s)")
    return p


def _err(msg: str) -> int:
    print(f"trunkguard: {msg}", file=sys.stderr)
    return 1


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    return load_config(args.config).control.socket


def _print_status(s: dict[str, Any]) -> None:
    print(f"trunkguard {s['version']}  site {s['site']}  node {s['node']}  up {s['uptime_s']}s")
    print()
    print(f"{'TARGET':<28} {'STATE':<12} {'RTT':>9} {'CODE':>5}  REASON")
    for name, t in s["targets"].items():
        rtt = "-" if t.get("last_rtt_ms") is None else f"{t['last_rtt_ms']:.1f}ms"
        code = t.get("last_code") or "-"
        print(f"{name:<28} {t['state']:<12} {rtt:>9} {code!s:>5}  {t['reason']}")
    for name, t in (s.get("links") or {}).items():
        print(f"{name:<28} {t['state']:<12} {'-':>9} {'-':>5}  {t['reason']}")
    sensors = s.get("sensors") or {}
    if sensors:
        print()
        print(f"{'SENSOR':<20} {'STATE':<9} {'VALUE':>9} {'RATE/MIN':>9} {'TO CRIT':>8}  REASON")
        for name, x in sensors.items():
            value = "-" if x["value"] is None else f"{x['value']}{x['unit']}"
            rate = "-" if x["rate_per_minute"] is None else f"{x['rate_per_minute']:+.2f}"
            ttc = "-" if x["time_to_critical_s"] is None else f"{x['time_to_critical_s']:.0f}s"
            print(f"{name:<20} {x['state']:<9} {value:>9} {rate:>9} {ttc:>8}  {x['reason']}")
    peers = s.get("peers") or {}
    if peers:
        takeovers = s.get("takeovers") or {}
        print()
        print(f"{'PEER SITE':<20} {'STATE':<11} {'TAKEOVER':<10} REASON")
        for name, p in peers.items():
            tk = takeovers.get(name)
            state = tk["state"] if tk else "-"
            why = p["reason"] if not tk or tk["state"] == "idle" else tk["reason"]
            print(f"{name:<20} {p['state']:<11} {state:<10} {why}")
    if s.get("fenced"):
        print()
        print(f"FENCED: {s['fenced']} (keeping own routing, claiming nothing)")
    for a in s.get("alarms") or ():
        print(f"ALARM: {a}")
    for i in s.get("incidents") or ():
        if i["state"] == "open":
            impact = ", ".join(f"{g}: {c}" for g, c in i["impact"].items()) or "no route moved"
            print(f"INCIDENT {i['severity']} since {i['opened']}: {i['cause']} ({impact})")
    ev = s.get("evacuation")
    if ev and (ev["state"] != "normal" or ev["forced"] or ev["rule_holds"]):
        forced = " (forced)" if ev["forced"] else ""
        print()
        print(f"SITE {ev['state'].upper()}{forced}: {ev['reason']}")
    print()
    print(f"{'ROUTE GROUP':<20} {'ACTIVE':<20} {'FAILBACK':<9} FLAGS")
    for name, r in s["routes"].items():
        flags = [
            f
            for f, on in (
                ("ALARM:no-path", r["alarm"]),
                ("waiting-for-verdicts", not r["ready"]),
                ("evacuated", r.get("evacuated")),
                ("took-over", r.get("took_over")),
            )
            if on
        ]
        if r["pinned"]:
            flags.append(f"pinned={r['pinned']}")
        print(f"{name:<20} {r['active'] or '-':<20} {r['failback']:<9} {' '.join(flags)}")
        for p in r["paths"]:
            mark = "*" if p["name"] == r["active"] else " "
            ok = "ok" if p["qualifies"] else "--"
            remote = " (remote)" if p.get("remote") else ""
            remote += f" (serves {p['serves']})" if p.get("serves") else ""
            needs = ", ".join(p["requires"]) or "nothing"
            print(f"   {mark} {p['name']:<20} {ok}  requires {needs}{remote}")
    acts = s.get("actuators") or {}
    if acts:
        print()
        for name, a in acts.items():
            print(f"actuator {name}: {'converged' if a['converged'] else 'NOT converged'}")


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        for p in e.problems:
            print(
                f"{args.config}: {p}" if not p.startswith(str(args.config)) else p, file=sys.stderr
            )
        return 1
    print(
        f"{args.config}: ok ({len(cfg.trunks)} trunks, {len(cfg.links)} links, "
        f"{len(cfg.sensors)} sensors, {len(cfg.routes)} route groups)"
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from trunkguard.app import run_app

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        for p in e.problems:
            print(f"trunkguard: {args.config}: {p}", file=sys.stderr)
        return 1
    json_logs = {"auto": None, "json": True, "console": False}[args.log_format]
    return asyncio.run(run_app(args.config, cfg, json_logs=json_logs))


def _action(args: argparse.Namespace) -> dict[str, Any]:
    """The command line as a command request (what the socket and MQTT both carry)."""
    req: dict[str, Any] = {"cmd": args.command}
    if args.command == "failover":
        req |= {"group": args.group, "path": args.path}
    elif args.command == "failback":
        req |= {"group": args.group}
    elif args.command == "release":
        req |= {"peer": args.peer}
    elif args.command == "maintenance":
        req |= {"target": args.target, "on": args.mode == "on"}
    elif args.command == "drill":
        req |= {"scenario": args.scenario, "dry_run": args.dry_run}
        req |= {"group": args.group} if args.group else {}
    return req


def _broker(args: argparse.Namespace) -> Any:
    from trunkguard.noc import BrokerOpts

    if not args.broker:
        raise CommandError("--broker is required")
    return BrokerOpts(args.broker, args.ca_file, args.username, args.password_file, args.prefix)


def _signed(args: argparse.Namespace, drill_timeout: float = 0.0) -> dict[str, Any]:
    """Send the command line as a signed command; the answers by node."""
    from trunkguard import noc

    if not args.key:
        raise CommandError("--key is required with --site (a signed command)")
    req = _action(args)
    action = req.pop("cmd")
    cid, payload = noc.signed(args.key, args.key_id, args.site, args.node, action, req)
    b = _broker(args)
    answers = noc.run(noc.send(b, cid, payload, args.site, args.node, args.timeout, drill_timeout))
    if not answers:
        raise CommandError(f"no node of site {args.site} answered within {args.timeout:g}s")
    return answers


def _cmd_remote(args: argparse.Namespace) -> int:
    answers, action = _signed(args), args.command
    if getattr(args, "json", False):
        print(json.dumps(answers, indent=2, sort_keys=True))
    for node, a in sorted(answers.items()):
        where = f"{args.site}/{node}"
        if not a.get("ok"):
            print(f"{where}: refused ({a.get('reason')}): {a.get('error')}")
        elif action == "status" and not getattr(args, "json", False):
            print(f"{where}:")
            _print_status(a["result"])
        elif action != "status":
            routes = a.get("result", {}).get("routes", {})
            print(
                f"{where}: ok; routes now: "
                + ", ".join(f"{g}={p or '-'}" for g, p in routes.items())
            )
    return 0 if all(a.get("ok") for a in answers.values()) else 1


def _cmd_drill(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trunkguard import drill_report

    if args.site:  # signed, over MQTT: the report comes back on drills/<id>
        reports = []
        for node, a in sorted(_signed(args, 0.0 if args.dry_run else DRILL_WAIT).items()):
            if not a.get("ok"):
                print(f"{args.site}/{node}: refused ({a.get('reason')}): {a.get('error')}")
            elif "report" not in a:
                started = a.get("result", {})
                print(f"{args.site}/{node}: drill {started.get('drill')}: {started.get('inject')}")
                reports.append({"result": "planned" if args.dry_run else "no report"})
            else:
                reports.append(a["report"])
    else:
        req = _action(args)
        reports = [request(_socket_path(args), req, timeout=DRILL_WAIT)]
    for report in (r for r in reports if "id" in r):
        if args.report_dir:
            d = Path(args.report_dir)
            d.mkdir(parents=True, exist_ok=True)
            base = d / f"drill-{report['id']}"
            base.with_suffix(".json").write_text(json.dumps(report, indent=2, sort_keys=True))
            base.with_suffix(".md").write_text(drill_report.markdown(report))
            base.with_suffix(".html").write_text(drill_report.html(report))
        if args.json:
            print(json.dumps(report, indent=2, sort_keys=True))
        else:
            print(drill_report.markdown(report), end="")
    ok = ("passed", "planned")
    return 0 if reports and all(r.get("result") in ok for r in reports) else 1


def _cmd_keygen(args: argparse.Namespace) -> int:
    from trunkguard.noc import keygen

    key, pub, public = keygen(args.out)
    name = pub.name.removesuffix(".pub")
    print(f"wrote {key} (private, 0600) and {pub}")
    rights = ", ".join(r.value for r in Right)
    print(f"on each agent, allow it in trunkguard.yaml (rights: {rights}):")
    print(f"commands:\n  keys:\n    {name}: {{public_key: {public}, allow: [read]}}")
    return 0


def _cmd_fleet(args: argparse.Namespace) -> int:
    from trunkguard import noc

    rows = noc.run(noc.fleet(_broker(args), args.site))
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    else:
        noc.print_fleet(rows)
    return 0


def _cmd_control(args: argparse.Namespace) -> int:
    if args.site:
        return _cmd_remote(args)
    path = _socket_path(args)
    if args.command == "status":
        s = request(path, {"cmd": "status"})
        if args.json:
            print(json.dumps(s, indent=2, sort_keys=True))
        else:
            _print_status(s)
        return 0
    res = request(path, _action(args))
    routes = ", ".join(f"{g}={p or '-'}" for g, p in res["routes"].items())
    print(f"ok; routes now: {routes}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from trunkguard.sip.ping import ping

    codes = [c.strip() for c in args.ok_codes.split(",") if c.strip()]
    try:
        return asyncio.run(
            ping(
                args.uri,
                count=args.count,
                interval=args.interval,
                timeout=args.timeout,
                ok_codes=codes,
                source_address=args.source,
            )
        )
    except KeyboardInterrupt:
        return 130


def _cmd_lab(args: argparse.Namespace) -> int:
    from trunkguard.lab.demo import run_lab

    return asyncio.run(run_lab(hold=args.hold, outage=args.outage))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {
        "run": _cmd_run,
        "check-config": _cmd_check,
        "probe": _cmd_probe,
        "lab": _cmd_lab,
        "keygen": _cmd_keygen,
        "drill": _cmd_drill,
        "fleet": _cmd_fleet,
    }
    try:
        return handlers.get(args.command, _cmd_control)(args)
    except ConfigError as e:
        return _err(e.problems[0])
    except CommandError as e:
        return _err(str(e))
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as e:
        return _err(str(e))
    except Exception as e:  # last resort: one line, never a traceback
        return _err(f"internal error: {type(e).__name__}: {e}")
