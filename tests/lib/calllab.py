"""The call lab: an SBC namespace (Kamailio with a two-carrier dispatcher set, the agent,
a sipp caller) and one namespace per carrier (sipp answering INVITE and OPTIONS).
Shared by tests/integration/test_calls_failover.py and bench/calls_failover.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.lib import calls
from tests.lib.kamailio import Sbc, sbc, write_ds_list
from tests.lib.netns import Netns, namespaces, veth

SBC_IP, GW_A, GW_B, SBC_B = "192.0.2.2", "192.0.2.1", "198.51.100.1", "198.51.100.2"
URI_A, URI_B = f"sip:{GW_A}:5060", f"sip:{GW_B}:5060"
RATE, CALL_MS = 20, 2000


@dataclass
class CallLab:
    sbc_ns: Netns
    carrier_a: Netns
    carrier_b: Netns
    kamailio: Sbc
    tmp: Path

    def caller(self, tmp: Path, total: int) -> AbstractContextManager[calls.Caller]:
        """The caller in the SBC namespace: `total` calls at RATE, CALL_MS each."""
        return calls.caller(
            tmp,
            f"{SBC_IP}:5060",
            ip=SBC_IP,
            rate=RATE,
            duration_ms=CALL_MS,
            calls=total,
            netns=self.sbc_ns.name,
        )

    def agent_config(self, hold: str = "2s") -> Path:
        text = f"""\
site: lab
node: sbc
control: {{socket: {self.tmp}/control.sock}}
metrics: null
probe: {{interval: 1s, fast_interval: 200ms, timeout: 500ms, rise: 2, fall: 3}}
actuators:
  drift_interval: 2s
  kamailio: {{rpc: "{self.kamailio.unix_url}", timeout: 1s}}
trunks:
  carrier-a: {{uri: "{URI_A}"}}
  carrier-b: {{uri: "{URI_B}"}}
routes:
  pstn:
    hold: {hold}
    paths:
      - name: carrier-a
        requires: [trunk:carrier-a]
        # B stays active behind A (lower priority): Kamailio's per-call failover
        # still saves calls placed before the agent has decided.
        actions: {{kamailio: {{setid: 1, active: ["{URI_A}", "{URI_B}"]}}}}
      - name: carrier-b
        requires: [trunk:carrier-b]
        actions: {{kamailio: {{setid: 1, active: ["{URI_B}"]}}}}
"""
        path = self.tmp / "trunkguard.yaml"
        path.write_text(text)
        return path


@contextmanager
def call_lab(tmp: Path, **kamailio_defines: str | int) -> Iterator[CallLab]:
    with namespaces("sbc", "ca", "cb") as (ns, ca, cb), ExitStack() as stack:
        veth(ns, f"{SBC_IP}/24", ca, f"{GW_A}/24")
        veth(ns, f"{SBC_B}/24", cb, f"{GW_B}/24")
        # Kamailio sends from SBC_IP on both links: carrier B needs the way back.
        cb.ip("route", "add", f"{SBC_IP}/32", "via", SBC_B)
        for ip, n in ((GW_A, ca), (GW_B, cb)):
            (tmp / ip).mkdir(parents=True)
            stack.enter_context(calls.carrier(tmp / ip, ip, 5060, netns=n.name))
        # Flags 8 (P): Kamailio's own probing, when a run turns it on, covers both.
        ds = write_ds_list(tmp / "dispatcher.list", [(1, URI_A, 8, 10, ""), (1, URI_B, 8, 5, "")])
        defines: dict[str, str | int] = {"DS_PING_INTERVAL": 0, "TRUSTED_NET": "192.0.2.0/24"}
        k = stack.enter_context(
            sbc(
                tmp,
                ds,
                sip_ip=SBC_IP,
                sip_port=5060,
                rpc_port=5071,
                netns=ns.name,
                **{**defines, **kamailio_defines},
            )
        )
        yield CallLab(ns, ca, cb, k, tmp)
