"""Two (or three) sites with real agents over bridged brokers: the peer-site lab.

Each site's namespace (tests/lib/sites.py) gets an SBC (sipp answering OPTIONS on the
site's address) and an agent that probes the other sites' SBCs, watches them as peers
and serves their calls: its route for the peer's numbers (203.0.113.0/24) goes to the
peer through the hub normally (`standby`) and to itself (`dev lo`, `takeover`) while it
has taken the peer over. Shared by tests/integration/test_peers.py and
bench/peer_takeover.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from tests.lib import procs, sipp
from tests.lib.agentproc import Agent, Event, cli
from tests.lib.sites import Sites, sites

NUMBERS = "203.0.113.0/24"  # a peer's numbers, as routed at the other site
SBC_PORT = 5060
NODE = "sbc1"


class PeerLab:
    def __init__(self, lab: Sites, tmp: Path, stack: ExitStack) -> None:
        self.lab, self.tmp, self._stack = lab, tmp, stack
        self.sbcs: dict[str, Any] = {}
        self.agents: dict[str, Agent] = {}
        self.configs: dict[str, Path] = {}

    # ---- SBCs -------------------------------------------------------------------------

    def start_sbc(self, site: str) -> None:
        s = self.lab[site]
        d = self.tmp / site / "sbc"
        d.mkdir(parents=True, exist_ok=True)
        cm = sipp.options_responder(d, s.address, SBC_PORT, netns=s.ns.name)
        self.sbcs[site] = (cm, cm.__enter__())

    def stop_sbc(self, site: str) -> None:
        cm, proc = self.sbcs.pop(site)
        procs.stop(proc)
        cm.__exit__(None, None, None)

    # ---- agents -----------------------------------------------------------------------

    def config(
        self,
        site: str,
        *,
        peers: list[str],
        serves: list[str] | None = None,
        quorum: bool = False,
        extra: str = "",
        hold: str = "3s",
        heartbeat: str | None = "500ms",  # None: the product's defaults (and for probes)
        probe: str | None = "{interval: 500ms, fast_interval: 200ms, timeout: 400ms, fall: 2}",
    ) -> Path:
        s = self.lab[site]
        d = self.tmp / site
        d.mkdir(parents=True, exist_ok=True)
        (d / "mqtt.pass").write_text(s.agent_password + "\n")
        serves = peers if serves is None else serves
        trunks = "".join(
            f'  {p}-sbc: {{uri: "sip:{self.lab[p].address}:{SBC_PORT}"}}\n' for p in serves
        )
        peer_lines = "".join(
            f"  {p}: {{confirm: [trunk:{p}-sbc], hold: {hold}}}\n"
            if p in serves
            else f"  {p}: {{}}\n"
            for p in peers
        )
        groups = "".join(
            f"""\
  {p}-numbers:
    paths:
      - name: takeover
        serves: {p}
        actions: {{netlink: [{{dst: {NUMBERS}, dev: lo}}]}}
      - name: standby
        actions: {{netlink: [{{dst: {NUMBERS}, gateway: {s.hub_address}}}]}}
"""
            for p in serves
        )
        text = f"""\
site: {site}
node: {NODE}
state_dir: {d}/state
control: {{socket: {d}/control.sock}}
metrics: null
{f"probe: {probe}" if probe else ""}
trunks:
{trunks or "  {}"}
peers:
{peer_lines}
{"takeover: {quorum: majority}" if quorum else ""}
routes:
{groups or "  {}"}
{extra}
mqtt:
  host: {s.address}
  port: {s.port}
  username: {s.agent_user}
  password_file: {d}/mqtt.pass
  keepalive: 2s
{f"  heartbeat: {heartbeat}" if heartbeat else ""}
"""
        text = text.replace("trunks:\n  {}", "trunks: {}").replace("routes:\n  {}", "routes: {}")
        path = d / "trunkguard.yaml"
        path.write_text(text)
        self.configs[site] = path
        return path

    def start_agent(self, site: str) -> Agent:
        agent = Agent(self.configs[site], netns=self.lab[site].ns.name)
        self.agents[site] = agent
        self._stack.callback(agent.stop)
        return agent

    def status(self, site: str) -> dict[str, Any]:
        sock = str(self.tmp / site / "control.sock")
        out = cli("status", "--json", "--socket", sock, netns=self.lab[site].ns.name)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def route(self, site: str) -> str:
        """The kernel's route for the peer's numbers in a site's namespace."""
        return self.lab[site].ns.ip("route", "show", NUMBERS).stdout.strip()


def takeover(peer: str, result: str | None = None, new: str | None = None) -> Any:
    return lambda e: (
        e.get("event") == "takeover"
        and e.get("peer") == peer
        and (result is None or e.get("result") == result)
        and (new is None or e.get("new") == new)
    )


def peer_state(site: str, new: str) -> Any:
    return lambda e: (
        e.get("event") == "target transition"
        and e.get("target") == f"peer:{site}"
        and e.get("new") == new
    )


def fenced(e: Event) -> bool:
    return bool(e.get("event", "").startswith("fenced"))


@contextmanager
def peer_lab(
    tmp: Path, names: tuple[str, ...] = ("site-a", "site-b"), **kw: Any
) -> Iterator[PeerLab]:
    with sites(tmp / "mq", names, **kw) as lab, ExitStack() as stack:
        pl = PeerLab(lab, tmp, stack)
        try:
            yield pl
        finally:
            for site in list(pl.sbcs):
                pl.stop_sbc(site)
