"""KamailioActuator against a real Kamailio running configs/kamailio/kamailio.cfg.

States are read back independently of the actuator (a raw JSON-RPC in tests.lib.kamailio),
and hand changes are made with kamcmd, as an operator would.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lib import calls, procs, sipp
from tests.lib.core import routes
from tests.lib.kamailio import SBC_LIST, Sbc, sbc, write_ds_list
from tests.lib.netns import Netns
from tests.lib.sipp import options_responder
from trunkguard.act.base import ActuatorError
from trunkguard.act.converge import ApplyReport, Converger
from trunkguard.act.kamailio import (
    DispatcherChoice,
    HttpRpc,
    KamailioActuator,
    UnixRpc,
    parse_rpc,
)

pytestmark = pytest.mark.integration

OUT = "outbound"
TRANSPORTS = ["http", "unix"]


def uri(port: int) -> str:
    return f"sip:127.0.0.1:{port}"


@dataclass
class Lab:
    """Set 1: carriers a (priority 10) and b, plus c that no path names; set 2: the site."""

    k: Sbc
    ports: dict[str, int]

    @property
    def a(self) -> str:
        return uri(self.ports["a"])

    @property
    def b(self) -> str:
        return uri(self.ports["b"])

    @property
    def c(self) -> str:
        return uri(self.ports["c"])

    @property
    def site(self) -> str:
        return uri(self.ports["site"])

    def choices(self) -> dict[tuple[str, str], DispatcherChoice]:
        return {
            (OUT, "carrier-a"): DispatcherChoice(1, (self.a,)),
            (OUT, "carrier-b"): DispatcherChoice(1, (self.b,)),
            (OUT, "remote"): DispatcherChoice(2, (self.site,)),
        }

    def url(self, transport: str) -> str:
        return self.k.http_url if transport == "http" else self.k.unix_url

    def actuator(
        self, transport: str = "http", *, off_state: str = "disabled", timeout: float = 2.0
    ) -> KamailioActuator:
        return KamailioActuator(
            "kam", self.url(transport), self.choices(), off_state=off_state, timeout=timeout
        )

    def set1(self) -> dict[str, str]:
        return self.k.states()[1]


@contextmanager
def lab_running(tmp: Path, flags: int = 0, **defines: str | int) -> Iterator[Lab]:
    ports = {n: procs.free_port() for n in ("a", "b", "c", "site")}
    rows = [
        (1, uri(ports["a"]), flags, 10, "duid=carrier-a"),
        (1, uri(ports["b"]), flags, 5, "duid=carrier-b"),
        (1, uri(ports["c"]), flags, 1, "duid=other"),
        (2, uri(ports["site"]), 0, 0, "duid=site-b"),
    ]
    ds_list = write_ds_list(tmp / "dispatcher.list", rows)
    defines.setdefault("DS_PING_INTERVAL", 0)
    with sbc(tmp, ds_list, **defines) as k:
        yield Lab(k, ports)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with lab_running(tmp_path) as lab:
        yield lab


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll an observable condition with a hard deadline."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


# -- the basics, over both transports ------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_apply_reads_back_and_second_apply_writes_nothing(lab: Lab, transport: str) -> None:
    act = lab.actuator(transport)
    assert await act.verify(routes({OUT: "carrier-b"})) is False  # the list file has all active
    assert await act.apply(routes({OUT: "carrier-b"})) is True
    states = lab.k.states()
    # c is in set 1 but in no path: never touched.
    assert states == {1: {lab.a: "DX", lab.b: "AX", lab.c: "AX"}, 2: {lab.site: "DX"}}
    assert await act.verify(routes({OUT: "carrier-b"})) is True
    assert await act.apply(routes({OUT: "carrier-b"})) is False
    assert lab.k.states() == states

    assert await act.apply(routes({OUT: "carrier-a"})) is True
    assert lab.k.states() == {1: {lab.a: "AX", lab.b: "DX", lab.c: "AX"}, 2: {lab.site: "DX"}}
    # Evacuation: every carrier of the group off, the site on.
    assert await act.apply(routes({OUT: "remote"})) is True
    assert lab.k.states() == {1: {lab.a: "DX", lab.b: "DX", lab.c: "AX"}, 2: {lab.site: "AX"}}
    assert await act.verify(routes({OUT: "remote"})) is True
    # Groups and paths without a choice are not ours.
    assert await act.apply(routes({"inbound": "main", OUT: "remote"})) is False
    await act.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_hand_change_is_seen_and_repaired(lab: Lab, transport: str) -> None:
    act = lab.actuator(transport)
    assert await act.apply(routes({OUT: "carrier-a"})) is True
    lab.k.kamcmd("dispatcher.set_state", "i", "1", lab.a)
    assert lab.set1()[lab.a] == "IX"
    assert await act.verify(routes({OUT: "carrier-a"})) is False
    assert await act.apply(routes({OUT: "carrier-a"})) is True
    assert lab.set1() == {lab.a: "AX", lab.b: "DX", lab.c: "AX"}

    # Someone re-enables the carrier we moved away from.
    lab.k.kamcmd("dispatcher.set_state", "a", "1", lab.b)
    assert await act.verify(routes({OUT: "carrier-a"})) is False
    assert await act.apply(routes({OUT: "carrier-a"})) is True
    assert lab.set1() == {lab.a: "AX", lab.b: "DX", lab.c: "AX"}
    assert await act.verify(routes({OUT: "carrier-a"})) is True


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_kamailio_restart_resets_states_and_apply_restores(lab: Lab, transport: str) -> None:
    act = lab.actuator(transport)
    await act.apply(routes({OUT: "carrier-b"}))
    assert lab.set1()[lab.a] == "DX"
    lab.k.restart()
    # Back to the list file: everything active again, the carrier we left included.
    assert lab.k.states() == {1: {lab.a: "AX", lab.b: "AX", lab.c: "AX"}, 2: {lab.site: "AX"}}
    assert await act.verify(routes({OUT: "carrier-b"})) is False
    assert await act.apply(routes({OUT: "carrier-b"})) is True
    assert lab.k.states() == {1: {lab.a: "DX", lab.b: "AX", lab.c: "AX"}, 2: {lab.site: "DX"}}
    assert await act.verify(routes({OUT: "carrier-b"})) is True


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_kamailio_down_is_a_quick_one_line_rpc_error(lab: Lab, transport: str) -> None:
    act = lab.actuator(transport, timeout=5.0)
    lab.k.stop()
    for call in (act.apply, act.verify):
        t0 = time.monotonic()
        with pytest.raises(ActuatorError) as ei:
            await call(routes({OUT: "carrier-a"}))
        took = time.monotonic() - t0
        e = ei.value
        assert e.reason == "rpc", e
        assert took < 0.5, f"{took:.3f}s: refused should not wait for the deadline"
        assert "\n" not in e.message and e.message.startswith("kam (")
        assert lab.url(transport).split(":", 1)[1] in e.message
        assert e.groups == frozenset()  # nothing was applied: all of them failed


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_unknown_destination_fails_only_its_group(lab: Lab, transport: str) -> None:
    typo = uri(1)
    choices = {
        **lab.choices(),
        # inbound: the site of set 2 is fine, its alternative has a typo.
        ("inbound", "main"): DispatcherChoice(1, (lab.c,)),
        ("inbound", "typo"): DispatcherChoice(1, (typo,)),
    }
    act = KamailioActuator("kam", lab.url(transport), choices)
    with pytest.raises(ActuatorError) as ei:
        await act.apply(routes({OUT: "carrier-b", "inbound": "typo"}))
    e = ei.value
    assert e.reason == "kamailio"
    assert e.groups == frozenset({"inbound"})
    assert f"{typo} not in dispatcher set 1" in e.message and "\n" not in e.message
    # outbound was applied; inbound kept c active: turning it off would leave nothing.
    assert lab.k.states() == {1: {lab.a: "DX", lab.b: "AX", lab.c: "AX"}, 2: {lab.site: "DX"}}
    assert await act.verify(routes({OUT: "carrier-b"})) is True
    assert await act.verify(routes({"inbound": "typo"})) is False

    # A set Kamailio does not have at all.
    ghost = KamailioActuator("kam", lab.url(transport), {("g", "p"): DispatcherChoice(9, (typo,))})
    with pytest.raises(ActuatorError, match=r"not in dispatcher set 9") as ei:
        await ghost.apply(routes({"g": "p"}))
    assert ei.value.groups == frozenset({"g"})


async def test_wrong_http_path_is_an_rpc_error(lab: Lab) -> None:
    url = f"http://127.0.0.1:{lab.k.rpc_port}/nope"
    act = KamailioActuator("kam", url, lab.choices())
    with pytest.raises(ActuatorError, match=r"HTTP 404") as ei:
        await act.verify(routes({OUT: "carrier-a"}))
    assert ei.value.reason == "rpc"


# -- the converger drives it -----------------------------------------------------------------


async def test_converger_repairs_hand_changes_and_restarts(lab: Lab) -> None:
    act = lab.actuator("unix")
    repaired = asyncio.Event()
    reports: list[ApplyReport] = []

    def on_report(r: ApplyReport) -> None:
        reports.append(r)
        if r.ok and r.changed and r.trigger == "drift":
            repaired.set()

    conv = Converger(act, drift_interval=0.2, on_report=on_report)
    task = asyncio.create_task(conv.run())
    try:
        conv.set_desired(routes({OUT: "carrier-b"}))
        await until(lambda: conv.converged, 5, "first convergence")
        assert reports[0].ok and reports[0].changed and reports[0].trigger == "desired"
        wanted = {lab.a: "DX", lab.b: "AX", lab.c: "AX"}
        assert lab.set1() == wanted

        lab.k.kamcmd("dispatcher.set_state", "a", "1", lab.a)  # by hand, behind our back
        async with asyncio.timeout(3):
            await repaired.wait()
        assert lab.set1() == wanted

        repaired.clear()
        lab.k.restart()
        async with asyncio.timeout(3):
            await repaired.wait()
        assert lab.set1() == wanted
        assert all(r.ok for r in reports)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- Kamailio's own probing ------------------------------------------------------------------


async def test_probing_all_leaves_disabled_carrier_off(tmp_path: Path) -> None:
    """ds_probing_mode 1 probes every destination that is not disabled, and re-enables an
    inactive one that answers: "disabled" holds, "inactive" does not."""
    with (
        lab_running(tmp_path, DS_PING_INTERVAL=1, DS_PROBING_MODE=1) as lab,
        options_responder(tmp_path, "127.0.0.1", lab.ports["a"]),
        options_responder(tmp_path, "127.0.0.1", lab.ports["b"]),
        options_responder(tmp_path, "127.0.0.1", lab.ports["c"]),
    ):
        # Probe replies set P on every carrier that answers.
        await until(lambda: set(lab.set1().values()) == {"AP"}, 5, "first probe round")
        act = lab.actuator()
        assert await act.apply(routes({OUT: "carrier-a"})) is True
        assert lab.set1() == {lab.a: "AP", lab.b: "DX", lab.c: "AP"}

        # c answers, so taking it inactive by hand lasts only until the next probes.
        lab.k.kamcmd("dispatcher.set_state", "i", "1", lab.c)
        seen_b: set[str] = set()

        def c_back() -> bool:
            s = lab.set1()
            seen_b.add(s[lab.b])
            return s[lab.c] == "AP"

        await until(c_back, 6, "Kamailio re-enabling c after probe replies")
        assert seen_b == {"DX"}, "b answers probes too, but disabled means not probed"
        assert await act.verify(routes({OUT: "carrier-a"})) is True

        # Failover: b gets back the probing flag it had when we disabled it.
        assert await act.apply(routes({OUT: "carrier-b"})) is True
        assert lab.set1() == {lab.a: "DX", lab.b: "AP", lab.c: "AP"}

        # "inactive" as the off state: Kamailio's probes undo it (hence the default).
        inactive = lab.actuator(off_state="inactive")
        assert await inactive.apply(routes({OUT: "carrier-a"})) is True
        assert lab.set1()[lab.b] == "IX"
        await until(lambda: lab.set1()[lab.b] == "AP", 6, "Kamailio re-enabling b")
        assert await inactive.verify(routes({OUT: "carrier-a"})) is False


async def test_probing_flagged_leaves_disabled_and_clear_inactive_alone(tmp_path: Path) -> None:
    """ds_probing_mode 0 probes destinations with the P flag (flags 8 in the list file).
    Kamailio 5.6 clears P after a successful probe, newer versions keep it: only state
    letters are asserted here."""
    with (
        lab_running(tmp_path, flags=8, DS_PING_INTERVAL=1, DS_PROBING_MODE=0) as lab,
        options_responder(tmp_path, "127.0.0.1", lab.ports["a"]),
        options_responder(tmp_path, "127.0.0.1", lab.ports["b"]),
        options_responder(tmp_path, "127.0.0.1", lab.ports["c"]),
    ):
        k = lab.k

        def letters() -> dict[str, str]:
            return {u: f[0] for u, f in lab.set1().items()}

        async def probes_ran(watch: str) -> set[str]:
            """Take c inactive (with P) by hand and wait for Kamailio's probes to
            re-enable it; the states `watch` went through meanwhile."""
            k.kamcmd("dispatcher.set_state", "ip", "1", lab.c)
            seen: set[str] = set()

            def c_back() -> bool:
                s = lab.set1()
                seen.add(s[watch])
                return s[lab.c][0] == "A"

            await until(c_back, 6, "Kamailio re-enabling c after probe replies")
            return seen

        for off_state, want in (("disabled", "DX"), ("inactive", "IX")):
            act = lab.actuator(off_state=off_state)
            assert await act.apply(routes({OUT: "carrier-a"})) is True
            assert lab.set1()[lab.b] == want  # "i" clears P too: no probes, no re-enable
            assert await probes_ran(lab.b) == {want}, "b answers probes but must stay off"
            assert letters() == {lab.a: "A", lab.b: want[0], lab.c: "A"}
            assert await act.verify(routes({OUT: "carrier-a"})) is True
            k.restart()  # back to the list file for the next round


async def test_probing_flag_is_kept_and_restored(tmp_path: Path) -> None:
    """set_state replaces P along with the state: a carrier we disabled gets P back when
    it becomes active again. With probing off nothing else changes the flags."""
    with lab_running(tmp_path, flags=8, DS_PING_INTERVAL=0) as lab:
        act = lab.actuator()
        assert await act.apply(routes({OUT: "carrier-a"})) is True
        assert lab.set1() == {lab.a: "AP", lab.b: "DX", lab.c: "AP"}  # a untouched, P kept
        assert await act.apply(routes({OUT: "carrier-b"})) is True
        assert lab.set1() == {lab.a: "DX", lab.b: "AP", lab.c: "AP"}
        assert await act.apply(routes({OUT: "carrier-a"})) is True
        assert lab.set1() == {lab.a: "AP", lab.b: "DX", lab.c: "AP"}
        # The flag is Kamailio's: an operator dropping it is not drift.
        lab.k.kamcmd("dispatcher.set_state", "a", "1", lab.a)
        assert await act.verify(routes({OUT: "carrier-a"})) is True
        # The site (set 2, flags 0 in this list) never had P: it comes back without.
        assert await act.apply(routes({OUT: "remote"})) is True
        assert lab.k.states()[2] == {lab.site: "AX"}


# -- the shipped example ----------------------------------------------------------------------

CARRIER = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="carrier {code}">
  <recv request="INVITE" crlf="true"/>
  <send>
    <![CDATA[
SIP/2.0 {code} {reason}
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Record-Route:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port]>
Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
{rest}
</scenario>
"""
BYE = """  <recv request="BYE"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
"""


@contextmanager
def carrier(tmp: Path, port: int, code: int) -> Iterator[None]:
    """sipp answering every INVITE on 127.0.0.1:port with `code`."""
    reason = {200: "OK", 503: "Service Unavailable"}[code]
    text = CARRIER.format(code=code, reason=reason, rest=BYE if code == 200 else "")
    ip = "127.0.0.1"
    with sipp.uas(tmp, f"carrier_{port}", text, ip, port, media_port=procs.free_port()):
        yield


async def call_once(tmp: Path, k: Sbc, tag: str) -> str:
    """Place one call through the SBC; the caller's outcome (COMPLETED, FAILED, ...)."""
    d = tmp / tag
    d.mkdir()
    target = f"127.0.0.1:{k.sip_port}"
    with calls.caller(d, target, ip="127.0.0.1", rate=1, duration_ms=50, calls=1) as c:
        await until(lambda: c.proc.poll() is not None, 15, f"call {tag}")
        outcomes = [o.what for o in c.outcomes()]
    assert outcomes, f"no outcome logged for call {tag}"
    return outcomes[-1]


def log_since(k: Sbc, mark: int) -> str:
    return k.log.read_text(errors="replace")[mark:]


def mentions(text: str, dest: str) -> bool:
    return re.search(re.escape(dest) + r"(?!\d)", text) is not None  # :506 is not :5060


async def test_example_config_routes_fails_over_and_follows_the_actuator(tmp_path: Path) -> None:
    with (
        lab_running(tmp_path) as lab,
        carrier(tmp_path, lab.ports["a"], 503),
        carrier(tmp_path, lab.ports["b"], 200),
        carrier(tmp_path, lab.ports["site"], 200),
    ):
        k = lab.k
        k.kamcmd("dispatcher.set_state", "d", "1", lab.c)  # c is nobody; keep it out
        # Everything active (the list file): a first by priority, its 503 -> b.
        mark = len(k.log.read_text(errors="replace"))
        assert await call_once(tmp_path, k, "both") == "COMPLETED"
        text = log_since(k, mark)
        assert mentions(text, f"dispatch: INVITE sip:pstn@127.0.0.1:{k.sip_port} -> {lab.a}")
        assert mentions(text, f": 503 from {lab.a} -> {lab.b}")

        act = lab.actuator()
        await act.apply(routes({OUT: "carrier-b"}))
        mark = len(k.log.read_text(errors="replace"))
        assert await call_once(tmp_path, k, "b") == "COMPLETED"
        text = log_since(k, mark)
        assert mentions(text, f"-> {lab.b}") and not mentions(text, lab.a)

        await act.apply(routes({OUT: "remote"}))
        mark = len(k.log.read_text(errors="replace"))
        assert await call_once(tmp_path, k, "site") == "COMPLETED"
        text = log_since(k, mark)
        assert mentions(text, f"-> {lab.site}")
        assert not mentions(text, lab.a) and not mentions(text, lab.b)


async def test_shipped_dispatcher_list_loads_and_is_steerable(tmp_path: Path) -> None:
    a, b, site = "sip:192.0.2.10:5060", "sip:198.51.100.10:5060", "sip:203.0.113.10:5060"
    # No probing: the documentation addresses must not see a packet.
    with sbc(tmp_path, SBC_LIST, DS_PING_INTERVAL=0) as k:
        assert k.states() == {1: {a: "AP", b: "AP"}, 2: {site: "AP"}}
        choices = {
            (OUT, "carrier-a"): DispatcherChoice(1, (a,)),
            (OUT, "carrier-b"): DispatcherChoice(1, (b,)),
            (OUT, "remote"): DispatcherChoice(2, (site,)),
        }
        act = KamailioActuator("kam", k.http_url, choices)
        assert await act.apply(routes({OUT: "carrier-a"})) is True
        assert k.states() == {1: {a: "AP", b: "DX"}, 2: {site: "DX"}}
        # The site had P when we disabled it: evacuation brings it back probed.
        assert await act.apply(routes({OUT: "remote"})) is True
        assert k.states() == {1: {a: "DX", b: "DX"}, 2: {site: "AP"}}


async def test_in_a_namespace_over_the_datagram_socket(tmp_path: Path) -> None:
    ns = Netns("kam")
    try:
        ns.ip("addr", "add", "10.255.0.1/32", "dev", "lo")
        a, b = "sip:10.255.0.7:5060", "sip:10.255.0.8:5060"
        ds_list = write_ds_list(tmp_path / "dispatcher.list", [(1, a, 0, 1, ""), (1, b, 0, 0, "")])
        with sbc(
            tmp_path,
            ds_list,
            sip_ip="10.255.0.1",
            sip_port=5060,
            rpc_port=5071,
            netns=ns.name,
            DS_PING_INTERVAL=0,
        ) as k:
            assert k.http_url == "http://10.255.0.1:5071/RPC"  # from inside the namespace
            choices = {("g", "a"): DispatcherChoice(1, (a,)), ("g", "b"): DispatcherChoice(1, (b,))}
            act = KamailioActuator("kam", k.unix_url, choices)
            assert await act.apply(routes({"g": "b"})) is True
            assert k.states() == {1: {a: "DX", b: "AX"}}
    finally:
        ns.delete()


# -- transports without Kamailio: deadlines and garbage ---------------------------------------


async def test_http_deadline_and_garbage(tmp_path: Path) -> None:
    conns: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append(w)  # accept, read nothing, answer nothing

    async def garbage(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await w.drain()
        w.close()

    choice = {("g", "p"): DispatcherChoice(1, ("sip:127.0.0.1:5060",))}
    silent_srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    garbage_srv = await asyncio.start_server(garbage, "127.0.0.1", 0)
    try:
        port = silent_srv.sockets[0].getsockname()[1]
        act = KamailioActuator("kam", f"http://127.0.0.1:{port}/RPC", choice, timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(ActuatorError) as ei:
            await act.apply(routes({"g": "p"}))
        assert ei.value.reason == "timeout"
        assert 0.25 < time.monotonic() - t0 < 1.5
        assert "no reply within 0.3s" in ei.value.message

        port = garbage_srv.sockets[0].getsockname()[1]
        act = KamailioActuator("kam", f"http://127.0.0.1:{port}/RPC", choice, timeout=2)
        with pytest.raises(ActuatorError, match="not an HTTP reply") as ei:
            await act.verify(routes({"g": "p"}))
        assert ei.value.reason == "rpc" and "\n" not in ei.value.message
    finally:
        for w in conns:
            w.close()
        silent_srv.close()
        garbage_srv.close()


async def test_refused_activation_keeps_the_old_destination_on() -> None:
    """Make-before-break when Kamailio refuses a write (here a scripted JSON-RPC peer:
    a real Kamailio refuses only what changed under our feet, e.g. a reload)."""
    a, b, dup = "sip:10.0.0.1:5060", "sip:10.0.0.2:5060", "sip:10.0.0.3:5060"
    listing = {
        "NRSETS": 1,
        "RECORDS": [
            {
                "SET": {
                    "ID": 1,
                    "TARGETS": [
                        {"DEST": {"URI": u, "FLAGS": f, "PRIORITY": 0}}
                        for u, f in ((a, "AP"), (b, "DX"), (dup, "AX"), (dup, "AX"))
                    ],
                }
            }
        ],
    }
    seen: list[tuple[str, list[object]]] = []

    async def peer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        req = json.loads(await r.readexactly(length))
        seen.append((req["method"], req["params"]))
        if req["method"] == "dispatcher.list":
            doc, status = {"result": listing}, "200 OK"
        else:
            doc, status = {"error": {"code": 500, "message": "State Update Failed"}}, "500 No"
        body = json.dumps({"jsonrpc": "2.0", "id": req["id"], **doc}).encode()
        w.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await w.drain()
        w.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        choices = {
            (OUT, "a"): DispatcherChoice(1, (a,)),
            (OUT, "b"): DispatcherChoice(1, (b,)),
            ("dup", "x"): DispatcherChoice(1, (dup,)),
        }
        act = KamailioActuator("kam", f"http://127.0.0.1:{port}/RPC", choices)
        with pytest.raises(ActuatorError) as ei:
            await act.apply(routes({OUT: "b", "dup": "x"}))
        e = ei.value
        assert e.reason == "kamailio" and e.groups == frozenset({OUT, "dup"})
        assert f"set_state ap 1 {b}: 500 State Update Failed" not in e.message  # b had no P
        assert f"set_state a 1 {b}: 500 State Update Failed" in e.message
        assert f"{dup} is listed 2 times in set 1" in e.message
        # b could not be activated, so a was never turned off.
        assert seen == [("dispatcher.list", ["short"]), ("dispatcher.set_state", ["a", 1, b])]
    finally:
        server.close()


async def test_datagram_deadline_stale_socket_and_cleanup(tmp_path: Path) -> None:
    choice = {("g", "p"): DispatcherChoice(1, ("sip:127.0.0.1:5060",))}
    path = tmp_path / "rpc.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as mute:
        mute.bind(str(path))  # receives, never answers
        act = KamailioActuator("kam", f"unix:{path}", choice, timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(ActuatorError) as ei:
            await act.apply(routes({"g": "p"}))
        assert ei.value.reason == "timeout" and 0.25 < time.monotonic() - t0 < 1.5
        assert b"dispatcher.list" in mute.recv(65536)
    # Closed but still on disk, as after a crash: refused at once.
    with pytest.raises(ActuatorError, match="Connection refused") as ei:
        await act.verify(routes({"g": "p"}))
    assert ei.value.reason == "rpc"
    path.unlink()
    with pytest.raises(ActuatorError, match="No such file") as ei:
        await act.verify(routes({"g": "p"}))
    assert ei.value.reason == "rpc"
    assert os.listdir(tmp_path) == []  # every reply socket unlinked


# -- configuration errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("http://127.0.0.1:5071/RPC", HttpRpc("127.0.0.1", 5071, "/RPC")),
        ("http://[::1]:5071/RPC", HttpRpc("::1", 5071, "/RPC")),
        ("http://kamailio.local:8080", HttpRpc("kamailio.local", 8080, "/RPC")),
        ("http://127.0.0.1/RPC?x=1", HttpRpc("127.0.0.1", 80, "/RPC?x=1")),
        ("unix:/run/kamailio/kamailio_rpc.sock", UnixRpc("/run/kamailio/kamailio_rpc.sock")),
        ("unix:///run/kamailio/kamailio_rpc.sock", UnixRpc("/run/kamailio/kamailio_rpc.sock")),
    ],
)
def test_parse_rpc(url: str, want: HttpRpc | UnixRpc) -> None:
    assert parse_rpc(url) == want
    assert parse_rpc(str(want)) == want


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "empty"),
        ("https://127.0.0.1:5071/RPC", "https is not supported"),
        ("ftp://x/RPC", "use http://"),
        ("127.0.0.1:5071", "use http://"),
        ("http://127.0.0.1:99999/RPC", "bad port"),
        ("http://127.0.0.1:x/RPC", "bad port"),
        ("http:///RPC", "no host"),
        ("http://u:p@127.0.0.1/RPC", "no user info"),
        ("http://[::g]/RPC", "bad host"),
        ("http://127.0.0.1/RPC x", "whitespace"),
        ("unix:run/kamailio.sock", "absolute"),
        ("unix:" + "/x" * 60, "longer than 107"),
    ],
)
def test_parse_rpc_rejects(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as ei:
        parse_rpc(url)
    assert "\n" not in str(ei.value)


def test_construction_errors() -> None:
    one = DispatcherChoice(1, ("sip:127.0.0.1:5060",))
    with pytest.raises(ValueError, match="in groups g1 and g2"):
        KamailioActuator(
            "kam",
            "unix:/run/k.sock",
            {("g1", "p"): one, ("g2", "p"): DispatcherChoice(1, ("SIP:127.0.0.1:5060",))},
        )
    with pytest.raises(ValueError, match="off_state"):
        KamailioActuator("kam", "unix:/run/k.sock", {}, off_state="gone")
    with pytest.raises(ValueError, match="timeout"):
        KamailioActuator("kam", "unix:/run/k.sock", {}, timeout=0)
    with pytest.raises(ValueError, match="absolute"):
        KamailioActuator("kam", "unix:k.sock", {})
    with pytest.raises(ValueError, match="at least one"):
        DispatcherChoice(1, ())
    with pytest.raises(ValueError, match="integer"):
        DispatcherChoice(True, ("sip:x",))
    with pytest.raises(ValueError, match="listed twice"):
        DispatcherChoice(1, ("sip:x", "SIP:X"))
    # Lists from config become tuples: the choice stays hashable.
    assert hash(DispatcherChoice(1, ["sip:x"])) == hash(DispatcherChoice(1, ("sip:x",)))  # type: ignore[arg-type]
