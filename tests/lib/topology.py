"""The two-carrier lab in namespaces: an agent host with a veth link to each carrier,
and sipp answering OPTIONS behind each link. Shared by the end-to-end tests and
bench/failover.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.lib import calls, sipp
from tests.lib.netns import Netns, namespaces, veth

PREFIX = "203.0.113.0/24"  # the "PSTN" prefix whose route the agent moves
GW_A, GW_B = "192.0.2.1", "198.51.100.1"
CALL_PORT = 5070  # where each carrier also answers calls and echoes RTP (call_carriers)


@dataclass
class Lab:
    agent: Netns
    carrier_a: Netns
    carrier_b: Netns
    tmp: Path
    # veth names: the agent's end towards each carrier, and the carrier's end.
    links: dict[str, tuple[str, str]] = field(default_factory=dict)

    def config(
        self,
        *,
        hold: str = "2s",
        interval: str = "1s",
        fast: str = "200ms",
        timeout: str = "500ms",
        rise: int = 2,
        fall: int = 3,
        links: bool = False,
        extra: str = "",
    ) -> Path:
        """The agent's config; links=True also watches both uplinks (up_hold 1s) and
        makes each trunk depend on its own. `extra` is appended (under routes: first)."""
        if_a, if_b = (self.links[k][0] for k in ("a", "b")) if links else ("", "")
        link_text = (
            f"""\
links:
  uplink-a: {{interface: {if_a}, gateway: {GW_A}, up_hold: 1s}}
  uplink-b: {{interface: {if_b}, gateway: {GW_B}, up_hold: 1s}}
"""
            if links
            else ""
        )
        dep_a = ", depends_on: [link:uplink-a]" if links else ""
        dep_b = ", depends_on: [link:uplink-b]" if links else ""
        text = f"""\
site: lab
node: agent
state_dir: {self.tmp}/state
control: {{socket: {self.tmp}/control.sock}}
metrics: {{listen: "127.0.0.1:9464"}}
probe:
  {{interval: {interval}, fast_interval: {fast}, timeout: {timeout}, rise: {rise}, fall: {fall}}}
{link_text}trunks:
  carrier-a: {{uri: "sip:{GW_A}:5060"{dep_a}}}
  carrier-b: {{uri: "sip:{GW_B}:5060"{dep_b}}}
routes:
  outbound:
    failback: auto
    hold: {hold}
    paths:
      - name: carrier-a
        requires: [trunk:carrier-a]
        actions: {{netlink: [{{dst: {PREFIX}, gateway: {GW_A}}}]}}
      - name: carrier-b
        requires: [trunk:carrier-b]
        actions: {{netlink: [{{dst: {PREFIX}, gateway: {GW_B}}}]}}
{extra}"""
        path = self.tmp / "trunkguard.yaml"
        path.write_text(text)
        return path

    def with_call_checks(self, cfg: Path, tone: bool = False) -> None:
        """Add call checks via-a and via-b (every hour, 1 s tone) to a config from
        config(), each path verified by its own; needs call_carriers()."""
        text = cfg.read_text()
        for side in ("a", "b"):
            text = text.replace(
                f"        requires: [trunk:carrier-{side}]\n",
                f"        requires: [trunk:carrier-{side}]\n        verified_by: call:via-{side}\n",
            )
        opts = "every: 1h, duration: 1s" + (", tone: true" if tone else "")
        text += "calls:\n" + "".join(
            f'  via-{side}: {{uri: "sip:echo@{gw}:{CALL_PORT}", {opts}}}\n'
            for side, gw in (("a", GW_A), ("b", GW_B))
        )
        cfg.write_text(text)

    @contextmanager
    def call_carriers(self) -> Iterator[None]:
        """sipp answering calls and echoing RTP on CALL_PORT behind each carrier link."""
        with ExitStack() as stack:
            for name, gw, ns in (("a", GW_A, self.carrier_a), ("b", GW_B, self.carrier_b)):
                stack.enter_context(
                    sipp.uas(
                        self.tmp,
                        f"call_{name}",
                        calls.CARRIER,
                        gw,
                        CALL_PORT,
                        netns=ns.name,
                        media_port=CALL_PORT + 2,
                        extra=("-rtp_echo",),
                    )
                )
            yield

    def gateway(self) -> str | None:
        out = self.agent.ip("-j", "route", "show", PREFIX).stdout
        routes = json.loads(out or "[]")
        return routes[0].get("gateway") if routes else None


@contextmanager
def two_carriers(tmp: Path) -> Iterator[Lab]:
    with namespaces("ag", "ca", "cb") as (ag, ca, cb), ExitStack() as stack:
        links = {
            "a": veth(ag, "192.0.2.2/24", ca, f"{GW_A}/24"),
            "b": veth(ag, "198.51.100.2/24", cb, f"{GW_B}/24"),
        }
        for ns, ip in ((ca, GW_A), (cb, GW_B)):
            # The carrier must know the way back to the agent's other side too.
            stack.enter_context(sipp.options_responder(tmp, ip, 5060, netns=ns.name))
        yield Lab(ag, ca, cb, tmp, links)
