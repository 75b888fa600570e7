"""Kamailio as a carrier (or SBC) answering OPTIONS on UDP, TCP and TLS, plus a throwaway PKI;
and Kamailio as the SBC of configs/kamailio/kamailio.cfg, whose dispatcher trunkguard steers.

Kamailio runs in the foreground (-DD -E) so the PID we hold is the one we stop; its runtime
files go under the test's tmp dir (-Y), so nothing needs /var/run.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lib import procs

REASONS = {
    200: "OK",
    403: "Forbidden",
    404: "Not Found",
    486: "Busy Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
}
_MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/kamailio/modules",
    "/usr/local/lib64/kamailio/modules",
    "/usr/local/lib/kamailio/modules",
)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


@dataclass
class Kamailio:
    ip: str
    udp_port: int | None
    tcp_port: int | None
    tls_port: int | None
    proc: subprocess.Popen[bytes]
    log: Path


def modules_dir() -> Path:
    """Where this host's Kamailio keeps its modules (Debian: multiarch lib dir)."""
    for d in _MODULE_DIRS:
        if (Path(d) / "sl.so").exists():
            return Path(d)
    out = subprocess.run(["kamailio", "-h"], capture_output=True, text=True, check=False)
    for line in (out.stdout + out.stderr).splitlines():
        if "Modules search path" in line and "default:" in line:
            return Path(line.split("default:", 1)[1].strip(" )"))
    raise FileNotFoundError("kamailio modules directory not found")


def _openssl(*args: str | Path, cwd: Path) -> None:
    res = subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    if res.returncode:
        raise RuntimeError(f"openssl {args[0]} failed: {res.stderr.strip()}")


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def make_pki(tmp: Path, *, server_names: Sequence[str] = ("127.0.0.1", "carrier.test")) -> TlsFiles:
    """A throwaway CA, a server certificate for server_names and a client certificate.

    EC P-256 keys keep generation fast; key identifiers are set so strict verifiers accept it.
    """
    d = tmp / "pki"
    n = 0
    while d.exists():  # several PKIs per test (a "wrong CA" needs a second one)
        n += 1
        d = tmp / f"pki{n}"
    d.mkdir(parents=True)
    key_args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *key_args,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "3",
        "-subj",
        f"/CN=trunkguard test CA {d.name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )
    sans = ",".join(f"IP:{s}" if _is_ip(s) else f"DNS:{s}" for s in server_names)
    leaf = (
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    (d / "server.ext").write_text(leaf + f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n")
    (d / "client.ext").write_text(leaf + "extendedKeyUsage=clientAuth\n")
    for who, cn in (
        ("server", server_names[0] if server_names else "server"),
        ("client", "trunkguard test client"),
    ):
        _openssl(
            "req",
            *key_args,
            "-keyout",
            f"{who}.key",
            "-out",
            f"{who}.csr",
            "-subj",
            f"/CN={cn}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{who}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3",
            "-extfile",
            f"{who}.ext",
            "-out",
            f"{who}.pem",
            cwd=d,
        )
    return TlsFiles(
        ca=d / "ca.pem",
        cert=d / "server.pem",
        key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
    )


def _config(
    ip: str,
    udp: int | None,
    tcp: int | None,
    tls: int | None,
    tls_cfg: Path | None,
    code: int,
    children: int,
    mpath: Path,
) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    lines = [
        "#!KAMAILIO",
        "debug=2",
        "log_stderror=yes",
        "memdbg=5",
        "memlog=5",
        f"children={children}",
        "auto_aliases=no",
        "dns=no",
        "rev_dns=no",
        f'mpath="{mpath}"',
    ]
    if udp:
        lines.append(f"listen=udp:{host}:{udp}")
    if tcp:
        lines.append(f"listen=tcp:{host}:{tcp}")
    if tls:
        lines.append(f"listen=tls:{host}:{tls}")
    lines.append(f"disable_tcp={'no' if tcp or tls else 'yes'}")
    if tcp or tls:
        lines.append(f"tcp_children={children}")
    if tls:
        lines += [
            "enable_tls=yes",
            'loadmodule "tls.so"',
            f'modparam("tls", "config", "{tls_cfg}")',
        ]
    lines += [
        'loadmodule "sl.so"',
        "request_route {",
        f'    if (method == "OPTIONS") {{ sl_send_reply("{code}", '
        f'"{REASONS.get(code, "Whatever")}"); exit; }}',
        '    if (method == "ACK") { exit; }',
        '    sl_send_reply("404", "Not Here");',
        "    exit;",
        "}",
        "",
    ]
    return "\n".join(lines)


def _tls_config(tls: TlsFiles, require_client_cert: bool) -> str:
    verify = "yes" if require_client_cert else "no"
    # ca_list only when verifying clients: OpenSSL builds the server's chain from it, so with
    # it Kamailio also sends the CA and a client lacking that CA sees "self-signed
    # certificate in certificate chain" instead of the usual "unable to get local issuer".
    ca = f"ca_list = {tls.ca}\n" if require_client_cert else ""
    return (
        f"[server:default]\nmethod = TLSv1.2+\nverify_certificate = {verify}\n"
        f"require_certificate = {verify}\nprivate_key = {tls.key}\ncertificate = {tls.cert}\n"
        f"{ca}\n[client:default]\nmethod = TLSv1.2+\n"
        "verify_certificate = no\nrequire_certificate = no\n"
    )


def _bound(k: Kamailio, netns: str | None) -> bool:
    return (k.udp_port is None or procs.udp_bound(k.udp_port, netns)) and all(
        p is None or procs.tcp_listening(p, netns) for p in (k.tcp_port, k.tls_port)
    )


@contextmanager
def kamailio(
    tmp: Path,
    *,
    ip: str = "127.0.0.1",
    udp_port: int | None = None,
    tcp_port: int | None = None,
    tls_port: int | None = None,
    tls: TlsFiles | None = None,
    require_client_cert: bool = False,
    options_code: int = 200,
    children: int = 2,
    netns: str | None = None,
) -> Iterator[Kamailio]:
    """Start Kamailio answering OPTIONS with options_code on each given listener."""
    if not (udp_port or tcp_port or tls_port):
        raise ValueError("give at least one of udp_port, tcp_port, tls_port")
    if tls_port and tls is None:
        raise ValueError("a TLS listener needs tls=TlsFiles (see make_pki)")
    mpath = modules_dir()
    if tls_port and not (mpath / "tls.so").exists():
        raise FileNotFoundError(f"{mpath}/tls.so missing: install kamailio-tls-modules")
    ports = [p for p in (udp_port, tcp_port, tls_port) if p]
    name = f"kamailio_{ports[0]}"
    run = tmp / f"{name}_run"
    run.mkdir(parents=True, exist_ok=True)
    tls_cfg = None
    if tls_port and tls is not None:
        tls_cfg = tmp / f"{name}_tls.cfg"
        tls_cfg.write_text(_tls_config(tls, require_client_cert))
    cfg = tmp / f"{name}.cfg"
    cfg.write_text(
        _config(ip, udp_port, tcp_port, tls_port, tls_cfg, options_code, children, mpath)
    )
    log = tmp / f"{name}.log"
    argv = [
        "kamailio",
        "-DD",
        "-E",
        "-f",
        str(cfg),
        "-Y",
        str(run),
        "-w",
        str(run),
        "-m",
        "32",
        "-M",
        "4",
    ]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    with procs.started(argv, log=log) as proc:
        k = Kamailio(
            ip=ip, udp_port=udp_port, tcp_port=tcp_port, tls_port=tls_port, proc=proc, log=log
        )

        def ready() -> bool:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"kamailio exited with {proc.returncode}:\n{tail}")
            return _bound(k, netns)

        procs.wait_for(ready, 15, f"kamailio listening on {ports}")
        yield k


# -- the example SBC (configs/kamailio) ---------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
SBC_CONFIG = REPO / "configs" / "kamailio" / "kamailio.cfg"
SBC_LIST = REPO / "configs" / "kamailio" / "dispatcher.list"


def _define(name: str, value: str | int) -> list[str]:
    # Strings (paths, CIDRs) must reach the preprocessor quoted; numbers and IPs must not.
    text = f'"{value}"' if isinstance(value, str) and not _bare(value) else str(value)
    return ["-A", f"{name}={text}"]


def _bare(value: str) -> bool:
    return value.isdigit() or _is_ip(value.strip("[]"))


@dataclass
class Sbc:
    """Kamailio running configs/kamailio/kamailio.cfg. stop() and start() keep the ports,
    paths and list file, so a restart resets every dispatcher state to the file's flags.

    RPC: `http_url` (reachable where SIP_IP/RPC_IP are, i.e. inside `netns` when given)
    and `unix_url` (the jsonrpcs datagram socket: a file, reachable from any namespace).
    """

    tmp: Path
    ds_list: Path
    sip_ip: str
    sip_port: int
    rpc_ip: str
    rpc_port: int
    netns: str | None = None
    defines: dict[str, str | int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def run_dir(self) -> Path:
        return self.tmp / f"sbc_{self.sip_port}_run"

    @property
    def rpc_sock(self) -> Path:
        return self.run_dir / "rpc.sock"

    @property
    def ctl_sock(self) -> Path:
        return self.run_dir / "ctl.sock"

    @property
    def http_url(self) -> str:
        return f"http://{self.rpc_ip}:{self.rpc_port}/RPC"

    @property
    def unix_url(self) -> str:
        return f"unix:{self.rpc_sock}"

    @property
    def log(self) -> Path:
        return self.tmp / f"sbc_{self.sip_port}.log"

    def argv(self) -> list[str]:
        defines: dict[str, str | int] = {
            "SIP_IP": self.sip_ip,
            "SIP_PORT": self.sip_port,
            "RPC_IP": self.rpc_ip,
            "RPC_PORT": self.rpc_port,
            "RPC_SOCK": str(self.rpc_sock),
            "CTL_SOCK": f"unix:{self.ctl_sock}",
            "DS_LIST": str(self.ds_list),
            "MPATH": str(modules_dir()),
            "CHILDREN": 2,
            **self.defines,
        }
        argv = [
            "kamailio",
            "-DD",
            "-E",
            "-f",
            str(SBC_CONFIG),
            "-Y",
            str(self.run_dir),
            "-w",
            str(self.run_dir),
            "-m",
            "32",
            "-M",
            "4",
        ]
        for name, value in defines.items():
            argv += _define(name, value)
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("kamailio is already running")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"--- start {self.starts}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"kamailio exited with {proc.returncode}:\n{tail}")
            return (
                self.rpc_sock.exists()
                and self.ctl_sock.exists()
                and procs.udp_bound(self.sip_port, self.netns)
                and procs.tcp_listening(self.rpc_port, self.netns)
            )

        procs.wait_for(ready, 15, f"kamailio SBC on {self.sip_ip}:{self.sip_port}")

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def rpc(self, method: str, *params: Any, timeout: float = 5.0) -> Any:
        """A raw JSON-RPC call over the datagram socket, independent of agent.act.kamailio.

        Returns the result; a JSON-RPC error raises RuntimeError with its message."""
        reply = self.run_dir / f"t{secrets.token_hex(3)}"
        req = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": "t"}
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(str(reply))
            try:
                s.settimeout(timeout)
                s.sendto(json.dumps(req).encode(), str(self.rpc_sock))
                doc = json.loads(s.recv(1 << 20))
            finally:
                os.unlink(reply)
        if "error" in doc:
            raise RuntimeError(f"{method}: {doc['error'].get('message')}")
        return doc["result"]

    def states(self) -> dict[int, dict[str, str]]:
        """dispatcher.list as {setid: {uri: flags}}, e.g. {1: {"sip:...": "AP"}}."""
        try:
            result = self.rpc("dispatcher.list")
        except RuntimeError as e:
            if "No Destination Sets" in str(e):
                return {}
            raise
        out: dict[int, dict[str, str]] = {}
        for rec in result["RECORDS"]:
            s = rec["SET"]
            out[s["ID"]] = {t["DEST"]["URI"]: t["DEST"]["FLAGS"] for t in s["TARGETS"]}
        return out

    def kamcmd(self, *args: str) -> str:
        """kamcmd over the ctl socket, as an operator would change things by hand."""
        res = subprocess.run(
            ["kamcmd", "-s", f"unix:{self.ctl_sock}", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if res.returncode:
            raise RuntimeError(f"kamcmd {' '.join(args)}: {(res.stderr or res.stdout).strip()}")
        return res.stdout


def free_udp_tcp_port(ip: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP right now (SIP listens on both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((ip, 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((ip, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


def write_ds_list(path: Path, rows: Sequence[tuple[int, str, int, int, str]]) -> Path:
    """A dispatcher.list: rows of (setid, uri, flags, priority, attrs)."""
    lines = ["# setid uri flags priority attrs"]
    lines += [
        f"{setid} {uri} {flags} {prio} {attrs}".rstrip() for setid, uri, flags, prio, attrs in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def sbc(
    tmp: Path,
    ds_list: Path = SBC_LIST,
    *,
    sip_ip: str = "127.0.0.1",
    sip_port: int | None = None,
    rpc_ip: str | None = None,
    rpc_port: int | None = None,
    netns: str | None = None,
    **defines: str | int,
) -> Iterator[Sbc]:
    """Start Kamailio with configs/kamailio/kamailio.cfg; extra defines as keywords,
    e.g. DS_PING_INTERVAL=1, DS_PROBING_MODE=1, TRUSTED_NET="10.0.0.0/8".

    Ports default to free ones (pick them yourself inside a namespace)."""
    k = Sbc(
        tmp=tmp,
        ds_list=ds_list,
        sip_ip=sip_ip,
        sip_port=sip_port or free_udp_tcp_port(sip_ip),
        rpc_ip=rpc_ip or sip_ip,
        rpc_port=rpc_port or procs.free_port(socket.SOCK_STREAM),
        netns=netns,
        defines=dict(defines),
    )
    try:
        k.start()
        yield k
    finally:
        with suppress(Exception):
            k.stop()
