"""Kamailio's dispatcher as an actuator: destination states over JSON-RPC.

Each (group, path) names a dispatcher set and the destinations that must be active for
it. Every destination that any path of the group names (per set) is managed: the chosen
path's are set active, the others off ("disabled" by default). Destinations no path
names are never touched. apply() reads `dispatcher.list` and calls
`dispatcher.set_state` only where the state differs, so a Kamailio restart (every state
back to the list file's flags) or a hand change is repaired by the next drift check.

Writes are make-before-break: a group's destinations go off only once every destination
of its chosen path is active, so a set never loses its last active destination to a
half-applied change.

Kamailio's own probing (ds_ping_interval > 0) never probes a disabled destination and
ignores late replies for one, so a carrier we moved away from stays off even though it
answers. set_state replaces the probing flag (P) along with the state, so activating
writes "ap" when the destination has P now, or had it when we turned it off; otherwise
"a". Only the state letter is compared: P is Kamailio's to change (ds_probing_mode 0
clears it after a successful probe, mode 1 sets it). See configs/kamailio/README.md.

Transports, stdlib only, one request per connection or socket:
* http://HOST:PORT/PATH: JSON-RPC over HTTP/1.1 (xhttp + jsonrpcs), framed by
  Content-Length (Kamailio keeps the connection open after replying).
* unix:/PATH: jsonrpcs's datagram socket. Kamailio replies to the sender's address, so
  each call binds its own socket next to Kamailio's and unlinks it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from trunkguard.act.base import ActuatorError, Desired
from trunkguard.obs.logging import get_logger

log = get_logger(__name__)

OFF_STATES = {"disabled": "d", "inactive": "i"}
MAX_HTTP_REPLY = 16 * 1024 * 1024
MAX_HTTP_HEADER_LINES = 100
# Kamailio sends a datagram reply from a socket with a 64 KiB send buffer.
MAX_DGRAM_REPLY = 256 * 1024
SUN_PATH_MAX = 107  # bytes, without the terminating NUL

Key = tuple[int, str]  # (setid, URI folded to lower case): Kamailio matches URIs caselessly


@dataclass(frozen=True)
class HttpRpc:
    host: str
    port: int
    path: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"


@dataclass(frozen=True)
class UnixRpc:
    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


RpcEndpoint = HttpRpc | UnixRpc


def parse_rpc(url: str) -> RpcEndpoint:
    """`http://127.0.0.1:5071/RPC` or `unix:/run/kamailio/kamailio_rpc.sock`.

    Raises ValueError with a one-line message. An HTTP URL without a path means /RPC.
    """
    if not isinstance(url, str) or not url or any(c.isspace() or c == "\0" for c in url):
        raise ValueError(f"bad RPC URL {url!r}: empty or contains whitespace")
    if url.startswith("unix:"):
        path = url[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]  # unix:///run/... is the same file
        if not path.startswith("/"):
            raise ValueError(f"bad RPC URL {url!r}: unix: needs an absolute socket path")
        if len(path.encode()) > SUN_PATH_MAX:
            raise ValueError(f"bad RPC URL {url!r}: socket path longer than {SUN_PATH_MAX} bytes")
        return UnixRpc(path)
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a bracketed host that is no IPv6 address
        raise ValueError(f"bad RPC URL {url!r}: bad host") from None
    if parts.scheme != "http":
        raise ValueError(
            f"bad RPC URL {url!r}: use http://HOST:PORT/PATH or unix:/PATH (https is not supported)"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"bad RPC URL {url!r}: bad port") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"bad RPC URL {url!r}: no host")
    if parts.username is not None or parts.fragment:
        raise ValueError(f"bad RPC URL {url!r}: no user info or #fragment allowed")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"bad RPC URL {url!r}: bad host") from None
    path = parts.path or "/RPC"
    if parts.query:
        path += f"?{parts.query}"
    return HttpRpc(host, port, path)


@dataclass(frozen=True)
class DispatcherChoice:
    """What one (group, path) wants in Kamailio: these destinations of `setid` active."""

    setid: int
    active: tuple[str, ...]

    def __post_init__(self) -> None:
        # Accept lists from config, but store a tuple so the choice stays hashable.
        object.__setattr__(self, "active", tuple(self.active))
        if isinstance(self.setid, bool) or not isinstance(self.setid, int) or self.setid < 0:
            raise ValueError(f"dispatcher set id must be an integer >= 0, got {self.setid!r}")
        if not self.active:
            raise ValueError(f"set {self.setid}: needs at least one active destination")
        seen: set[str] = set()
        for uri in self.active:
            if not isinstance(uri, str) or not uri or any(c.isspace() for c in uri):
                raise ValueError(f"set {self.setid}: bad destination URI {uri!r}")
            if uri.lower() in seen:
                raise ValueError(f"set {self.setid}: destination {uri} listed twice")
            seen.add(uri.lower())


@dataclass(frozen=True)
class _Dest:
    uri: str  # as Kamailio spells it
    flags: str  # "AP", "DX", "IP", "TP", ...


Snapshot = dict[int, list[_Dest]]


@dataclass(frozen=True)
class _Write:
    state: str  # for dispatcher.set_state: "a", "ap", "d", "i"
    setid: int
    uri: str  # as Kamailio spells it
    key: Key
    had_probing: bool = False


@dataclass
class _Plan:
    """What one group needs: the writes, and the problems found."""

    on: list[_Write] = field(default_factory=list)
    off: list[_Write] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # A destination of the chosen path is missing: turning others off would leave none.
    hold_off: bool = False


class KamailioActuator:
    kind = "kamailio"
    reads_before_write = True  # apply() reads dispatcher.list and writes only what differs

    def __init__(
        self,
        name: str,
        rpc: str,
        choices: Mapping[tuple[str, str], DispatcherChoice],
        *,
        timeout: float = 2.0,
        off_state: str = "disabled",
    ) -> None:
        if off_state not in OFF_STATES:
            raise ValueError(f"off_state must be 'disabled' or 'inactive', got {off_state!r}")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.name = name
        self._endpoint = parse_rpc(rpc)
        self._timeout = timeout
        self._off = OFF_STATES[off_state]
        self._choices = dict(choices)
        # group -> managed destinations (key -> URI as configured)
        self._managed: dict[str, dict[Key, str]] = {}
        owner: dict[Key, str] = {}
        for (group, _path), choice in self._choices.items():
            for uri in choice.active:
                key = (choice.setid, uri.lower())
                # Two groups steering one destination would undo each other for ever.
                if owner.setdefault(key, group) != group:
                    raise ValueError(
                        f"{name}: {uri} (set {choice.setid}) is in groups {owner[key]} and {group}"
                    )
                self._managed.setdefault(group, {})[key] = uri
        # Destinations we turned off while they had the probing flag (turning them off
        # cleared it), with the flags we left them with: restored when they come back.
        self._off_probed: dict[Key, str] = {}

    # -- the contract -------------------------------------------------------------

    async def apply(self, desired: Desired) -> bool:
        todo = self._todo(desired)
        if not todo:
            return False
        snap = await self._read()
        wrote = False
        failures: list[ActuatorError] = []
        failed: set[str] = set()
        for i, (group, choice) in enumerate(todo):
            plan = self._plan(group, choice, snap)
            errors = list(plan.errors)
            try:
                for w in plan.on:
                    wrote = True
                    if (refused := await self._write(group, w)) is not None:
                        errors.append(refused)
                        plan.hold_off = True
                if not plan.hold_off:
                    for w in plan.off:
                        wrote = True
                        if (refused := await self._write(group, w)) is not None:
                            errors.append(refused)
            except ActuatorError as e:
                # Kamailio is unreachable: this group and the ones not yet done failed.
                rest = {g for g, _ in todo[i:]}
                done = "; ".join(f.message for f in failures)
                msg = f"{e.message}" + (f"; also {done}" if done else "")
                raise ActuatorError(e.reason, msg, frozenset(failed | rest)) from e
            if errors:
                failed.add(group)
                msg = f"{self.name}: {group}: " + "; ".join(errors)
                failures.append(ActuatorError("kamailio", msg))
        if failures:
            detail = "; ".join(f.message for f in failures)
            raise ActuatorError("kamailio", detail, frozenset(failed))
        return wrote

    async def verify(self, desired: Desired) -> bool:
        todo = self._todo(desired)
        if not todo:
            return True
        snap = await self._read()
        for group, choice in todo:
            plan = self._plan(group, choice, snap)
            if plan.on or plan.off or plan.errors:
                return False
        return True

    async def close(self) -> None:
        """Nothing to release: every call opens and closes its own connection or socket."""

    # -- planning -----------------------------------------------------------------

    def _todo(self, desired: Desired) -> list[tuple[str, DispatcherChoice]]:
        out = []
        for group, paths in sorted(desired.items()):
            choice = self._choices.get((group, paths[0]))  # failover groups: one path
            if choice is not None:
                out.append((group, choice))
        return out

    def _plan(self, group: str, choice: DispatcherChoice, snap: Snapshot) -> _Plan:
        plan = _Plan()
        chosen = {(choice.setid, uri.lower()) for uri in choice.active}
        for key, uri in sorted(self._managed[group].items()):
            setid = key[0]
            want_on = key in chosen
            found = [d for d in snap.get(setid, []) if d.uri.lower() == key[1]]
            if len(found) != 1:
                if not found:
                    plan.errors.append(f"{uri} not in dispatcher set {setid}")
                else:
                    # set_state changes only the first of them.
                    plan.errors.append(f"{uri} is listed {len(found)} times in set {setid}")
                plan.hold_off |= want_on
                continue
            dest = found[0]
            letter, probing = dest.flags[:1], dest.flags[1:2] == "P"
            if want_on:
                # T (trying) is Kamailio's own probing counting failures: it still routes
                # there, and rewriting it would reset that count.
                if letter not in ("A", "T"):
                    probe = probing or key in self._off_probed
                    plan.on.append(_Write("ap" if probe else "a", setid, dest.uri, key))
            elif letter != self._off.upper() or (self._off == "i" and probing):
                # An inactive destination keeping P would be re-enabled by a probe reply.
                plan.off.append(_Write(self._off, setid, dest.uri, key, probing))
        return plan

    def _remember(self, snap: Snapshot) -> None:
        """Forget destinations that are no longer as we left them (restart, reload, hand
        change): their flags show Kamailio's own view of probing again."""
        for key, left in list(self._off_probed.items()):
            now = [d.flags for d in snap.get(key[0], []) if d.uri.lower() == key[1]]
            if now != [left]:
                del self._off_probed[key]

    # -- RPC ----------------------------------------------------------------------

    async def _read(self) -> Snapshot:
        try:
            result = await self._call("dispatcher.list", ["short"])
        except ActuatorError as e:
            if e.reason == "kamailio" and e.message.endswith("No Destination Sets"):
                result = {"RECORDS": []}
            else:
                raise
        try:
            snap = _parse_list(result)
        except (TypeError, ValueError, KeyError) as e:
            msg = f"{self.name}: unexpected dispatcher.list reply: {e}"
            raise ActuatorError("rpc", msg) from None
        self._remember(snap)
        return snap

    async def _write(self, group: str, w: _Write) -> str | None:
        """One dispatcher.set_state; why Kamailio refused it, or None."""
        try:
            await self._call("dispatcher.set_state", [w.state, w.setid, w.uri])
        except ActuatorError as e:
            if e.reason != "kamailio":
                raise
            return f"set_state {w.state} {w.setid} {w.uri}: {e.message.rsplit(': ', 1)[-1]}"
        log.info(
            "dispatcher set",
            actuator=self.name,
            group=group,
            setid=w.setid,
            uri=w.uri,
            state=w.state,
        )
        if w.state.startswith("a"):
            self._off_probed.pop(w.key, None)
        elif w.had_probing:
            self._off_probed[w.key] = w.state.upper() + "X"  # how Kamailio shows it now
        return None

    async def _call(self, method: str, params: list[Any]) -> Any:
        return await rpc(self._endpoint, method, params, self._timeout, self.name)

    def __repr__(self) -> str:
        return f"KamailioActuator({self.name!r}, {str(self._endpoint)!r})"


async def rpc(
    endpoint: RpcEndpoint, method: str, params: list[Any], timeout: float, name: str
) -> Any:
    """One JSON-RPC call to Kamailio; ActuatorError with a one-line reason otherwise."""
    req_id = secrets.token_hex(8)  # a string: Kamailio echoes numbers as doubles
    doc = {"jsonrpc": "2.0", "method": method, "params": params, "id": req_id}
    body = json.dumps(doc).encode()
    where = f"{name} ({endpoint})"
    try:
        async with asyncio.timeout(timeout):
            if isinstance(endpoint, HttpRpc):
                raw = await _http_post(endpoint, body)
            else:
                raw = await _dgram_call(endpoint, body)
    except TimeoutError:
        raise ActuatorError("timeout", f"{where}: {method}: no reply within {timeout:g}s") from None
    except _BadReply as e:
        raise ActuatorError("rpc", f"{where}: {method}: {e}") from None
    except OSError as e:
        raise ActuatorError("rpc", f"{where}: {method}: {e.strerror or e}") from None
    return _result(raw, req_id, method, where)


class _BadReply(Exception):
    pass


def _result(raw: bytes, req_id: str, method: str, where: str) -> Any:
    try:
        doc = json.loads(raw)
    except ValueError:
        snippet = raw[:80].decode(errors="replace")
        raise ActuatorError("rpc", f"{where}: {method}: not JSON: {snippet!r}") from None
    if not isinstance(doc, dict) or doc.get("id") != req_id:
        raise ActuatorError("rpc", f"{where}: {method}: reply is not for this request")
    err = doc.get("error")
    if err is not None:
        if isinstance(err, dict):
            text = f"{err.get('code', '?')} {err.get('message', '')}".strip()
        else:
            text = str(err)
        raise ActuatorError("kamailio", f"{where}: {method}: {text}")
    return doc.get("result")


def _records(value: Any) -> list[Any]:
    # Lists of one element may come as the element itself, depending on the version.
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _parse_list(result: Any) -> Snapshot:
    if not isinstance(result, dict):
        raise ValueError(f"a {type(result).__name__}, not an object")
    snap: Snapshot = {}
    for record in _records(result.get("RECORDS")):
        s = record["SET"]
        setid = s["ID"]
        if not isinstance(setid, int):
            raise ValueError(f"set ID {setid!r}")
        dests = snap.setdefault(setid, [])
        for target in _records(s.get("TARGETS")):
            d = target["DEST"]
            uri, flags = d["URI"], d["FLAGS"]
            if not isinstance(uri, str) or not isinstance(flags, str) or not flags:
                raise ValueError(f"destination {d!r}")
            dests.append(_Dest(uri, flags.upper()))
    return snap


# -- transports -----------------------------------------------------------------------


async def _http_post(ep: HttpRpc, body: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(ep.host, ep.port)
    try:
        host = f"[{ep.host}]" if ":" in ep.host else ep.host
        head = (
            f"POST {ep.path} HTTP/1.1\r\nHost: {host}:{ep.port}\r\n"
            "Content-Type: application/json\r\nAccept: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        try:
            status, reason, length = await _read_head(reader)
            if length is None:
                data = await _read_to_eof(reader)
            elif length > MAX_HTTP_REPLY:
                raise _BadReply(f"reply of {length} bytes is too large")
            else:
                data = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            raise _BadReply(f"bad HTTP reply ({type(e).__name__})") from None
        # jsonrpcs puts RPC faults in the body of a non-200 reply: let them through.
        if status != 200 and not data.lstrip().startswith(b"{"):
            raise _BadReply(f"HTTP {status} {reason}")
        return data
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    data = b""
    while chunk := await reader.read(65536):
        data += chunk
        if len(data) > MAX_HTTP_REPLY:
            raise _BadReply("reply is too large")
    return data


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, int | None]:
    line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise _BadReply(f"not an HTTP reply: {line[:60]!r}")
    length = None
    for _ in range(MAX_HTTP_HEADER_LINES):
        header = (await reader.readline()).decode("latin-1")
        if header in ("\r\n", "\n"):
            return int(parts[1]), parts[2] if len(parts) > 2 else "", length
        if not header:
            raise _BadReply("connection closed in the HTTP header")
        name, _, value = header.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
            if length < 0:
                raise _BadReply("negative Content-Length")
    raise _BadReply("too many HTTP header lines")


async def _dgram_call(ep: UnixRpc, body: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    bound = False
    try:
        sock.setblocking(False)
        reply = _bind_reply(sock, os.path.dirname(ep.path))
        bound = True
        # Kamailio may run as another user and must be able to send the reply; the
        # directory decides who can reach the socket, the random id guards the content.
        os.chmod(reply, 0o666)  # noqa: S103
        await loop.sock_sendto(sock, body, ep.path)
        return await loop.sock_recv(sock, MAX_DGRAM_REPLY)
    finally:
        sock.close()
        if bound:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(reply)


def _bind_reply(sock: socket.socket, directory: str) -> str:
    """Bind next to Kamailio's socket: a directory Kamailio can reach (our own runtime and
    tmp directories are private). The name is short, so it fits sun_path wherever
    Kamailio's own socket does; bind() fails on an existing name, so retry on a clash."""
    for _ in range(3):
        reply = os.path.join(directory, f".tg{secrets.token_hex(3)}")
        if len(reply.encode()) > SUN_PATH_MAX:
            raise _BadReply(f"reply socket path {reply} is too long")
        try:
            sock.bind(reply)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                continue
            raise _BadReply(f"cannot bind reply socket {reply}: {e.strerror or e}") from None
        return reply
    raise _BadReply(f"cannot bind a reply socket in {directory}: names in use")
