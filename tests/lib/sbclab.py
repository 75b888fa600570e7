"""The drill lab on loopback: Kamailio with the shipped SBC config in front of two sipp
carriers and a remote site (each answers OPTIONS and calls, and echoes RTP), a room
temperature read from a file, and the agent steering Kamailio's dispatcher.

Route group `outbound`: carrier-a, carrier-b (each needs the SBC, trunk `sbc` with role
platform, and its carrier; proven by a call through Kamailio) and the remote site
(proven by a call to it). Every drill scenario has something to take out here.
Shared by tests/integration/test_drills_sbc.py and bench/drills.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.lib import calls, procs, sipp
from tests.lib.kamailio import Sbc, sbc, write_ds_list

ROOM_OK = "22.0"


def uri(port: int) -> str:
    return f"sip:127.0.0.1:{port}"


@dataclass
class SbcLab:
    tmp: Path
    k: Sbc
    ports: dict[str, int]  # a, b, site

    @property
    def socket(self) -> Path:
        return self.tmp / "control.sock"

    def config(
        self, extra: str = "", *, max_age: str = "1d", schedule: str = "", via_sbc: str = ""
    ) -> Path:
        """The agent's config; `extra` is appended (top-level sections), `via_sbc` to
        the settings of the call check through Kamailio (", capacity: {...}")."""
        p, k = self.ports, self.k
        every = "1s" if via_sbc else "1h"
        checks = f"duration: 1s, max_age: {max_age}"
        drills = f"drills:\n  schedule:\n{schedule}" if schedule else ""
        text = f"""\
site: lab
node: sbc1
state_dir: {self.tmp}/state
control: {{socket: {self.socket}}}
metrics: null
probe: {{interval: 1s, fast_interval: 200ms, timeout: 500ms, rise: 2, fall: 2}}
trunks:
  sbc: {{uri: "{uri(k.sip_port)}", role: platform}}
  carrier-a: {{uri: "{uri(p["a"])}"}}
  carrier-b: {{uri: "{uri(p["b"])}"}}
  site-b: {{uri: "{uri(p["site"])}"}}
sensors:
  room:
    command: {{argv: [/bin/cat, "{self.tmp}/room"]}}
    interval: 1s
    unit: "C"
    warn: 27
    critical: 32
evacuation:
  when: {{sensors: [room], is: critical}}
  hold: 5m
calls:
  via-sbc: {{uri: "sip:echo@127.0.0.1:{k.sip_port}", every: {every}, {checks}{via_sbc}}}
  via-site: {{uri: "sip:echo@127.0.0.1:{p["site"]}", every: 1h, {checks}}}
actuators:
  kamailio: {{rpc: "{k.unix_url}"}}
routes:
  outbound:
    hold: 30s
    paths:
      - name: carrier-a
        requires: [trunk:sbc, trunk:carrier-a]
        verified_by: call:via-sbc
        actions: {{kamailio: {{setid: 1, active: ["{uri(p["a"])}"]}}}}
      - name: carrier-b
        requires: [trunk:sbc, trunk:carrier-b]
        verified_by: call:via-sbc
        actions: {{kamailio: {{setid: 1, active: ["{uri(p["b"])}"]}}}}
      - name: remote
        remote: true
        requires: [trunk:site-b]
        verified_by: call:via-site
        actions: {{kamailio: {{setid: 2, active: ["{uri(p["site"])}"]}}}}
{drills}{extra}"""
        path = self.tmp / "trunkguard.yaml"
        path.write_text(text)
        return path

    def dispatcher(self) -> dict[int, dict[str, str]]:
        """Kamailio's dispatcher states, read back: {setid: {uri: flags}}."""
        return self.k.states()

    def log_mark(self) -> int:
        return len(self.k.log.read_text(errors="replace"))

    def log_since(self, mark: int) -> str:
        return self.k.log.read_text(errors="replace")[mark:]

    @contextmanager
    def party(self, name: str, scenario: str = calls.CARRIER) -> Iterator[None]:
        """One of a, b, site answering with `scenario` (default: calls, RTP echoed)."""
        port = self.ports[name]
        with sipp.uas(
            self.tmp,
            f"{name}_{port}",
            scenario,
            "127.0.0.1",
            port,
            media_port=procs.free_port(),
            extra=("-rtp_echo",),
        ):
            yield


@contextmanager
def sbc_lab(
    tmp: Path, *, b_scenario: str = calls.CARRIER, start_b: bool = True
) -> Iterator[SbcLab]:
    """The SBC and its carriers running; the agent is the caller's to start."""
    ports = {n: procs.free_port() for n in ("a", "b", "site")}
    rows = [
        (1, uri(ports["a"]), 0, 10, "duid=carrier-a"),
        (1, uri(ports["b"]), 0, 5, "duid=carrier-b"),
        (2, uri(ports["site"]), 0, 0, "duid=site-b"),
    ]
    (tmp / "room").write_text(ROOM_OK + "\n")
    ds_list = write_ds_list(tmp / "dispatcher.list", rows)
    with sbc(tmp, ds_list, DS_PING_INTERVAL=0) as k, ExitStack() as stack:
        lab = SbcLab(tmp, k, ports)
        stack.enter_context(lab.party("a"))
        stack.enter_context(lab.party("site"))
        if start_b:
            stack.enter_context(lab.party("b", b_scenario))
        yield lab
