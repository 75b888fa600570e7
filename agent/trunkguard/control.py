"""Local control channel between the CLI and the daemon: a UNIX stream socket.

Authentication is the kernel's: the socket is mode 0660 in a 0750 directory and
every connection's peer credentials must be root, the daemon's own user, or a member
of its group (the operators: SO_PEERCRED's primary group or SO_PEERGROUPS). One JSON
request line in, one JSON response line out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from trunkguard.commands import CommandError

MAX_REQUEST = 64 * 1024
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13; not named in Python 3.11
MAX_GROUPS = 256  # 1024 bytes: the most Python's getsockopt() takes


def _peer(sock: socket.socket) -> tuple[int, set[int]]:
    """The peer's uid and its groups (primary and supplementary)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, gid = struct.unpack("3i", creds)
    groups = {int(gid)}
    with contextlib.suppress(OSError):  # an older kernel: the primary group only
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * MAX_GROUPS)
        groups.update(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    return int(uid), groups


def allowed(uid: int, groups: set[int]) -> bool:
    return uid in (0, os.getuid()) or os.getgid() in groups


class ControlServer:
    def __init__(self, path: str, handler: Handler, log: Any) -> None:
        self.path = Path(path)
        self.handler = handler
        self.log = log
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        if self.path.exists():
            if _answers(self.path):
                raise OSError(f"another trunkguard is already listening on {self.path}")
            self.path.unlink()
        old = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid, groups = _peer(writer.get_extra_info("socket"))
            line = await asyncio.wait_for(reader.readline(), 5.0)  # read first: no EPIPE
            if not allowed(uid, groups):
                self.log.warning("control connection refused", peer_uid=uid)
                why = "permission denied: run as root, the trunkguard user or in its group"
                await _reply(writer, {"ok": False, "error": why})
                return
            if len(line) > MAX_REQUEST or not line.endswith(b"\n"):
                await _reply(writer, {"ok": False, "error": "request too long or incomplete"})
                return
            try:
                req = json.loads(line)
            except ValueError:
                await _reply(writer, {"ok": False, "error": "request is not JSON"})
                return
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                await _reply(writer, {"ok": False, "error": "request needs a 'cmd'"})
                return
            try:
                result = await self.handler(req)
                await _reply(writer, {"ok": True, "result": result})
            except CommandError as e:
                await _reply(writer, {"ok": False, "error": str(e)})
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except Exception:  # a bad request must never take the daemon down
            self.log.exception("control request failed")
            with contextlib.suppress(Exception):
                await _reply(writer, {"ok": False, "error": "internal error, see the daemon log"})
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _reply(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj).encode() + b"\n")
    await writer.drain()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def request(path: str, req: dict[str, Any], timeout: float = 10.0) -> Any:
    """Blocking client used by the CLI; raises CommandError with a one-line message."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise CommandError(
                f"no trunkguard daemon listening on {path} (is it running?)"
            ) from None
        except PermissionError:
            raise CommandError(
                f"permission denied on {path}: run as root, the trunkguard user or in its group"
            ) from None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(json.dumps(req).encode() + b"\n")  # refused: the answer says why
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    try:
        resp = json.loads(buf)
    except ValueError:
        raise CommandError("daemon closed the connection without an answer") from None
    if not resp.get("ok"):
        raise CommandError(str(resp.get("error", "request failed")))
    return resp.get("result")
