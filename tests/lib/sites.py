"""A bridged multi-site MQTT lab: a hub broker and one broker per site, each in its own
network namespace, configured from the shipped templates in configs/mosquitto/.

    hub ns (ip_forward=1, mosquitto on 0.0.0.0:1883)
      |-- 10.77.1.1/24 <-> 10.77.1.2/24 -- site-a ns (mosquitto on 10.77.1.2:1883,
      |                                    bridged to 10.77.1.1:1883, default via hub)
      '-- 10.77.2.1/24 <-> 10.77.2.2/24 -- site-b ns (...)

Sites reach each other's addresses through the hub namespace. Every broker also listens
on a unix socket (the one thing the test process, which stays in the host namespace,
can reach); `Sites.client()` connects there. Programs run inside a namespace
(`site.ns.exec_argv(...)`) use `site.host`/`site.port` instead.

Accounts, as the shipped ACLs want them: per site the agents' account named like the
site (`site.agent_user`, `site.agent_password`), on the hub one bridge account per site
(named like the site too, `site.bridge_password`), and `noc` (`Sites.noc_user`/
`noc_password`) on every broker.

Nothing here touches the host's own network namespace; every namespace, process and
file is removed on exit, by the PIDs and names this module chose.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from tests.lib.mosquitto import Broker, TlsFiles, make_tls
from tests.lib.netns import Netns, veth

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "mosquitto"
PORT = 1883
TLS_PORT = 8883
NOC = "noc"
# The node name the lab's own probe messages use (trunkguard/<site>/_lab/cmd[/result]).
LAB_NODE = "_lab"
NFT_TABLE = "tgbridge"

# Strings of the shipped files that the lab replaces (a missing one fails loudly).
EXAMPLE_SITE = "site-a"
EXAMPLE_PEER_LINE = "topic trunkguard/site-b/# in 1\n"
EXAMPLE_LISTENER = "listener 1883 192.0.2.10\n"
EXAMPLE_HUB = "hub.example.net:1883"
EXAMPLE_DIR = "/etc/mosquitto/trunkguard/"
EXAMPLE_PASSWORD = "remote_password CHANGE-ME\n"
BRIDGE_IN_ALL = "topic trunkguard/# in 1\n"


def _replace(text: str, old: str, new: str, what: str) -> str:
    if old not in text:
        raise ValueError(f"{what}: shipped template no longer contains {old!r}")
    return text.replace(old, new)


def _test_lines(socket: Path) -> str:
    """What the lab adds to a shipped config: a unix socket for the test process, and
    run as ourselves (as root mosquitto would switch to user "mosquitto", which cannot
    read the test's files)."""
    return (
        "\n# --- added by tests/lib/sites.py ---\n"
        f"listener 0 {socket}\n"
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
    )


def site_conf(
    name: str,
    peers: Sequence[str],
    *,
    address: str,
    hub: str,
    workdir: Path,
    bridge_password: str,
    socket: Path,
    bridge_in: str = "peers",
) -> str:
    """configs/mosquitto/site.conf for site `name`, bridged to `hub` (host:port).

    bridge_in="all" replaces the per-peer "in" lines by the naive "trunkguard/# in 1"
    (only to demonstrate why the template does not do that)."""
    text = (SHIPPED / "site.conf").read_text()
    sentinel = "\x00PEERS\x00\n"
    text = _replace(text, EXAMPLE_PEER_LINE, sentinel, "site.conf")
    text = _replace(text, EXAMPLE_SITE, name, "site.conf")
    if bridge_in == "all":
        in_lines = BRIDGE_IN_ALL
    elif bridge_in == "peers":
        in_lines = "".join(f"topic trunkguard/{p}/# in 1\n" for p in peers)
    else:
        raise ValueError(f"bridge_in must be 'peers' or 'all', not {bridge_in!r}")
    text = text.replace(sentinel, in_lines)
    text = _replace(text, EXAMPLE_LISTENER, f"listener {PORT} {address}\n", "site.conf")
    text = _replace(text, EXAMPLE_HUB, hub, "site.conf")
    text = _replace(text, EXAMPLE_DIR, f"{workdir}/", "site.conf")
    text = _replace(text, EXAMPLE_PASSWORD, f"remote_password {bridge_password}\n", "site.conf")
    return text + _test_lines(socket)


def hub_conf(*, workdir: Path, socket: Path, tls: TlsFiles | None = None) -> str:
    text = (SHIPPED / "hub.conf").read_text()
    text = _replace(text, EXAMPLE_DIR, f"{workdir}/", "hub.conf")
    if tls is not None:  # the NOC's way in: MQTT over TLS on TLS_PORT
        text += (
            f"\nlistener {TLS_PORT}\ncafile {tls.ca_file}\ncertfile {tls.cert_file}\n"
            f"keyfile {tls.key_file}\n"
        )
    return text + _test_lines(socket)


def site_acl(name: str) -> str:
    return _replace((SHIPPED / "acl-site.conf").read_text(), EXAMPLE_SITE, name, "acl-site")


def hub_acl() -> str:
    return (SHIPPED / "acl-hub.conf").read_text()


def write_passwd(path: Path, users: dict[str, str]) -> Path:
    for i, (user, password) in enumerate(users.items()):
        flags = ["-c", "-b"] if i == 0 else ["-b"]
        subprocess.run(
            ["mosquitto_passwd", *flags, str(path), user, password],
            check=True,
            capture_output=True,
        )
    path.chmod(0o600)
    return path


@dataclass
class Hub:
    ns: Netns
    broker: Broker  # host: the first site's hub-side address; port: PORT
    socket: Path  # unix socket of the hub broker, for clients in the test process
    passwd_file: Path
    acl_file: Path
    addresses: dict[str, str]  # site name -> the hub's address on that site's link
    tls: TlsFiles | None = None  # with sites(tls=True): TLS on TLS_PORT, for 10.77.1.1


@dataclass
class Site:
    name: str
    index: int  # the i in 10.77.<i>.0/24
    ns: Netns
    address: str  # this site's address (10.77.<i>.2); its broker listens there
    hub_address: str  # the hub's end of the link (10.77.<i>.1): gateway, bridge target
    broker: Broker
    socket: Path  # unix socket of this site's broker, for clients in the test process
    agent_user: str  # the agents' account on this site's broker (= the site's name)
    agent_password: str
    bridge_password: str  # of the account `name` on the hub (the bridge's login)
    passwd_file: Path
    acl_file: Path
    conf: Path
    bridge_id: str  # the bridge's client id on the hub (remote_clientid)

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def state_topic(self) -> str:
        """Where mosquitto publishes the bridge state ("1"/"0") on this site's broker."""
        return f"$SYS/broker/connection/{self.bridge_id}/state"


class Sites:
    """The running lab; see sites()."""

    def __init__(
        self,
        tmp: Path,
        hub: Hub,
        sites: dict[str, Site],
        noc_password: str,
        witness: str | None = None,
    ) -> None:
        self.tmp = tmp
        self.hub = hub
        self.sites = sites  # name -> Site, the witness site included
        self.noc_user = NOC
        self.noc_password = noc_password
        self.witness = witness

    def __getitem__(self, name: str) -> Site:
        return self.sites[name]

    @property
    def names(self) -> list[str]:
        return list(self.sites)

    # --- clients -------------------------------------------------------------------

    def socket(self, where: str) -> Path:
        """The unix socket of the hub ("hub") or of a site's broker."""
        return self.hub.socket if where == "hub" else self[where].socket

    def client(
        self,
        where: str,
        *,
        user: str | None = None,
        password: str | None = None,
        **kw: Any,
    ) -> aiomqtt.Client:
        """An MQTT 5 client of the hub ("hub") or of a site's broker, from the test
        process. Default account: the site's agents; on the hub: noc."""
        if user is None:
            user = NOC if where == "hub" else self[where].agent_user
        if password is None:
            password = self.password(where, user)
        kw.setdefault("protocol", aiomqtt.ProtocolVersion.V5)
        return aiomqtt.Client(
            str(self.socket(where)),
            PORT,
            username=user,
            password=password,
            transport="unix",
            **kw,
        )

    def password(self, where: str, user: str) -> str:
        if user == NOC:
            return self.noc_password
        if where == "hub":
            return self[user].bridge_password
        if user == self[where].agent_user:
            return self[where].agent_password
        raise KeyError(f"no account {user!r} on {where}")

    # --- faults --------------------------------------------------------------------

    def kill_broker(self, site: str) -> None:
        """SIGKILL the site's broker (its retained messages are lost: no persistence)."""
        self[site].broker.kill()

    def start_broker(self, site: str) -> None:
        self[site].broker.start()

    def kill_hub(self) -> None:
        self.hub.broker.kill()

    def start_hub(self) -> None:
        self.hub.broker.start()

    def restart_hub(self) -> None:
        """Stop (SIGTERM) and start the hub: its retained messages are gone."""
        self.hub.broker.restart()

    def block_bridge(self, site: str) -> None:
        """Silently drop (no RST, no ICMP) all TCP between the site and the hub's broker
        port, both ways, with nftables inside the site's namespace."""
        s = self[site]
        s.ns.nft(
            f"table inet {NFT_TABLE} {{\n"
            "  chain out { type filter hook output priority -10;\n"
            f"    ip daddr {s.hub_address} tcp dport {PORT} drop; }}\n"
            "  chain in { type filter hook input priority -10;\n"
            f"    ip saddr {s.hub_address} tcp sport {PORT} drop; }}\n"
            "}\n"
        )

    def unblock_bridge(self, site: str) -> None:
        self[site].ns.sh("nft", "delete", "table", "inet", NFT_TABLE, check=False)

    def reset_bridge(self, site: str) -> None:
        """Abort the bridge's TCP connection inside the site's namespace (ss -K): unlike
        block_bridge(), mosquitto notices at once and reconnects after restart_timeout."""
        s = self[site]
        s.ns.sh("ss", "-HKtn", "dst", s.hub_address, "dport", "=", f":{PORT}")

    def bridge_established(self, site: str) -> bool:
        """Whether the kernel of the site's namespace has an established TCP connection
        to the hub's broker (i.e. the bridge has not given up on it yet)."""
        s = self[site]
        out = s.ns.sh(
            "ss", "-Htn", "state", "established", f"( dport = :{PORT} )", "dst", s.hub_address
        ).stdout
        return bool(out.strip())

    # --- waiting -------------------------------------------------------------------

    async def bridge_connected(self, site: str, timeout: float = 30) -> float:
        """Wait until the site's bridge carries messages both ways: the NOC at the hub
        sends trunkguard/<site>/_lab/cmd (a bridge "in" topic), the site's agent account
        answers on .../cmd/result (an "out" topic). Returns the seconds it took.
        These probes are not retained, but `trunkguard/#` subscribers see them."""
        t0 = time.monotonic()
        topic = f"trunkguard/{site}/{LAB_NODE}/cmd"
        async with asyncio.timeout(timeout):
            while True:
                try:
                    async with (
                        self.client("hub") as hub,
                        self.client(site) as local,
                    ):
                        await local.subscribe(topic, qos=1)
                        await hub.subscribe(f"{topic}/result", qos=1)
                        while True:
                            token = secrets.token_hex(4).encode()
                            await hub.publish(topic, token, qos=1)
                            if not await _receive(local, topic, token, 0.5):
                                continue
                            await local.publish(f"{topic}/result", token, qos=1)
                            if await _receive(hub, f"{topic}/result", token, 0.5):
                                return time.monotonic() - t0
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.1)  # a broker (re)starting: try again

    def wait_bridge_connected(self, site: str, timeout: float = 30) -> float:
        """bridge_connected() for synchronous code (runs its own event loop in a thread)."""
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.bridge_connected(site, timeout)).result()

    async def all_bridges_connected(self, timeout: float = 30) -> None:
        await asyncio.gather(*(self.bridge_connected(s, timeout) for s in self.sites))


async def _receive(client: aiomqtt.Client, topic: str, payload: bytes, within: float) -> bool:
    """Whether `payload` arrives on `topic` within `within` seconds (others are skipped)."""
    try:
        async with asyncio.timeout(within):
            async for msg in client.messages:
                if msg.topic.matches(topic) and msg.payload == payload:
                    return True
    except TimeoutError:
        return False
    return False


@contextmanager
def sites(
    tmp: Path,
    names: Sequence[str] = ("site-a", "site-b"),
    *,
    witness: str | None = None,
    bridge_in: str = "peers",
    tls: bool = False,
) -> Iterator[Sites]:
    """Start the lab: a hub, one site per name (plus the witness site, bridged like the
    others), all bridges connected when this yields. See the module docstring."""
    all_names = [*names, *([witness] if witness else [])]
    if len(set(all_names)) != len(all_names) or "hub" in all_names:
        raise ValueError(f"site names must be unique and not 'hub': {all_names}")
    tmp.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        # Unix socket paths must stay under 108 bytes: keep them out of pytest's tmp.
        sockdir = Path(tempfile.mkdtemp(prefix="tg-sites-"))
        stack.callback(shutil.rmtree, sockdir, ignore_errors=True)

        hub_ns = Netns("hub")
        stack.callback(hub_ns.delete)
        hub_ns.sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        namespaces: dict[str, Netns] = {}
        for i, name in enumerate(all_names, start=1):
            ns = Netns("s")
            stack.callback(ns.delete)
            veth(ns, f"10.77.{i}.2/24", hub_ns, f"10.77.{i}.1/24")
            ns.ip("route", "add", "default", "via", f"10.77.{i}.1")
            namespaces[name] = ns

        noc_password = secrets.token_hex(8)
        hubdir = tmp / "hub"
        hubdir.mkdir()
        site_list: dict[str, Site] = {}
        for i, name in enumerate(all_names, start=1):
            workdir = tmp / name
            workdir.mkdir()
            address, hub_address = f"10.77.{i}.2", f"10.77.{i}.1"
            agent_password, bridge_password = secrets.token_hex(8), secrets.token_hex(8)
            socket = sockdir / f"{name}.sock"
            conf = workdir / "site.conf"
            conf.write_text(
                site_conf(
                    name,
                    [p for p in all_names if p != name],
                    address=address,
                    hub=f"{hub_address}:{PORT}",
                    workdir=workdir,
                    bridge_password=bridge_password,
                    socket=socket,
                    bridge_in=bridge_in,
                )
            )
            passwd = write_passwd(workdir / "passwd", {name: agent_password, NOC: noc_password})
            acl = workdir / "acl-site.conf"
            acl.write_text(site_acl(name))
            site_list[name] = Site(
                name=name,
                index=i,
                ns=namespaces[name],
                address=address,
                hub_address=hub_address,
                broker=Broker(conf, address, PORT, namespaces[name].name),
                socket=socket,
                agent_user=name,
                agent_password=agent_password,
                bridge_password=bridge_password,
                passwd_file=passwd,
                acl_file=acl,
                conf=conf,
                bridge_id=f"trunkguard-bridge-{name}",
            )

        hub_passwd = write_passwd(
            hubdir / "passwd-hub",
            {**{s.name: s.bridge_password for s in site_list.values()}, NOC: noc_password},
        )
        hub_acl_file = hubdir / "acl-hub.conf"
        hub_acl_file.write_text(hub_acl())
        hub_socket = sockdir / "hub.sock"
        hub_conf_file = hubdir / "hub.conf"
        hub_tls = make_tls(hubdir / "pki", san="IP:10.77.1.1") if tls else None
        hub_conf_file.write_text(hub_conf(workdir=hubdir, socket=hub_socket, tls=hub_tls))
        hub = Hub(
            ns=hub_ns,
            broker=Broker(hub_conf_file, "10.77.1.1", PORT, hub_ns.name),
            socket=hub_socket,
            passwd_file=hub_passwd,
            acl_file=hub_acl_file,
            addresses={s.name: s.hub_address for s in site_list.values()},
            tls=hub_tls,
        )

        # Brokers are stopped by PID before their namespaces go (callbacks run LIFO).
        hub.broker.start()
        stack.callback(hub.broker.stop)
        for s in site_list.values():
            s.broker.start()
            stack.callback(s.broker.stop)

        lab = Sites(tmp, hub, site_list, noc_password, witness)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, lab.all_bridges_connected()).result()
        yield lab
