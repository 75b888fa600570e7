"""Link watcher: the netlink fast path for interface, address and gateway-neighbour state.

An input only. One rtnetlink socket, subscribed to link, address and neighbour
notifications *before* the initial dumps, keeps a model of the kernel's state;
each notification updates it and re-derives only the links on the interface it
touched, so a carrier loss reaches on_change without any polling.

If the socket fails (ENOBUFS after an overrun, or anything else), events may have
been lost: the watcher reopens it, dumps everything again and reports what changed
meanwhile. A link is never left "up" on the strength of a possibly missed event.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
)
from pyroute2.netns import create_socket
from structlog.typing import FilteringBoundLogger

from trunkguard.obs.logging import get_logger

DOWN_CONDITIONS = ("admin", "carrier", "address", "neighbour")

GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_NEIGH
# Room for a burst of notifications (an interface flap emits a dozen). Set with
# SO_RCVBUFFORCE so net.core.rmem_max does not cap it; the kernel doubles it.
RCVBUF = 4 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RETRY_MAX = 5.0  # seconds between attempts while the socket cannot be reopened

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
IFA_F_DADFAILED = 0x08
NTF_PROXY = 0x08
AF_BRIDGE = 7
_NUD = {
    0x00: "none",
    0x01: "incomplete",
    0x02: "reachable",
    0x04: "stale",
    0x08: "delay",
    0x10: "probe",
    0x20: "failed",
    0x40: "noarp",
    0x80: "permanent",
}
_NO_CARRIER = frozenset({"down", "lowerlayerdown", "notpresent"})

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class LinkSpec:
    name: str  # config name, e.g. "uplink-a"
    interface: str  # e.g. "eth1"
    gateway: str | None = None  # IPv4/IPv6 next hop on that interface
    address: str | None = None  # an IP that must be on the interface (no prefix length)
    down_when: frozenset[str] = frozenset(DOWN_CONDITIONS)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("link: empty name")
        if not 0 < len(self.interface.encode()) < 16 or "/" in self.interface:
            raise ValueError(f"link {self.name}: bad interface name {self.interface!r}")
        for what, value in (("gateway", self.gateway), ("address", self.address)):
            if value is not None and _ip(value) is None:
                raise ValueError(f"link {self.name}: {what} {value!r} is not an IP address")
        unknown = set(self.down_when) - set(DOWN_CONDITIONS)
        if unknown:
            raise ValueError(f"link {self.name}: unknown down_when {sorted(unknown)}")


@dataclass(frozen=True)
class LinkFacts:
    """What the kernel says about one interface, as last seen."""

    present: bool = False
    admin_up: bool = False  # IFF_UP
    carrier: bool = False  # IFF_LOWER_UP (link_status also looks at operstate)
    operstate: str = "unknown"
    addresses: frozenset[str] = frozenset()  # IPs on it (no prefix), all families
    # NUD state name of the gateway's neighbour entry on it, None when absent.
    neighbour: str | None = None


def _ip(text: str) -> IP | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # a zone names no other address
    except ValueError:
        return None


def _global(ip: IP) -> bool:
    # Facts carry no scope, so judge by the address: these ranges never get you off-link.
    return not (ip.is_link_local or ip.is_loopback or ip.is_multicast or ip.is_unspecified)


def link_status(spec: LinkSpec, facts: LinkFacts) -> tuple[bool, str]:
    """(up, reason), checking missing, admin, carrier, address, neighbour in that order.

    Only conditions in spec.down_when count; a missing interface is always down.
    """
    dev = spec.interface
    if not facts.present:
        return False, f"interface {dev} missing"
    when = spec.down_when
    if "admin" in when and not facts.admin_up:
        return False, f"{dev} administratively down"
    # Loopback and some tunnels say operstate "unknown" with LOWER_UP set: that is up.
    if "carrier" in when and (not facts.carrier or facts.operstate in _NO_CARRIER):
        return False, f"{dev} no carrier (operstate {facts.operstate})"
    if "address" in when:
        have = {ip for a in facts.addresses if (ip := _ip(a)) is not None}
        if spec.address is not None:
            if _ip(spec.address) not in have:
                return False, f"address {spec.address} removed from {dev}"
        else:
            gw = _ip(spec.gateway) if spec.gateway is not None else None
            family = gw.version if gw is not None else None
            if not any(_global(ip) and family in (None, ip.version) for ip in have):
                what = f"IPv{family} address" if family else "address"
                return False, f"no {what} on {dev}"
    # Only "failed" is a verdict; absent or incomplete means the kernel has not concluded.
    if "neighbour" in when and spec.gateway is not None and facts.neighbour == "failed":
        return False, f"gateway {spec.gateway} unreachable (neighbour failed)"
    return True, "up"


OnLink = Callable[[str, bool, str, float], None]  # (link name, up, reason, at=clock())


@dataclass
class _Iface:
    name: str
    flags: int
    operstate: str


@dataclass
class _Kernel:
    """The kernel's state as far as the watched links need it, keyed by ifindex."""

    gateways: frozenset[str]  # neighbour entries are kept for these IPs only
    links: dict[int, _Iface] = field(default_factory=dict)
    index: dict[str, int] = field(default_factory=dict)  # name -> ifindex
    # ifindex -> {(address, prefixlen)}: one IP may be there with two prefix lengths.
    addrs: dict[int, set[tuple[str, int]]] = field(default_factory=dict)
    neigh: dict[tuple[int, str], str] = field(default_factory=dict)  # (ifindex, ip) -> NUD

    def facts(self, interface: str, gateway: str | None) -> LinkFacts:
        idx = self.index.get(interface)
        if idx is None:
            return LinkFacts()
        link = self.links[idx]
        return LinkFacts(
            present=True,
            admin_up=bool(link.flags & IFF_UP),
            carrier=bool(link.flags & IFF_LOWER_UP),
            operstate=link.operstate,
            addresses=frozenset(a for a, _ in self.addrs.get(idx, ())),
            neighbour=self.neigh.get((idx, gateway)) if gateway is not None else None,
        )

    def apply(self, msg: Any) -> Iterable[str]:
        """Update from one RTM_* message; return the interface names it may have changed."""
        kind = msg["header"]["type"]
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            # AF_BRIDGE link messages are bridge-port news; RTM_DELLINK there only
            # means "left the bridge", never that the interface is gone.
            return () if msg["family"] == AF_BRIDGE else self._link(msg, kind == RTM_NEWLINK)
        if kind in (RTM_NEWADDR, RTM_DELADDR):
            return self._addr(msg, kind == RTM_NEWADDR)
        if kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
            return self._neigh(msg, kind == RTM_NEWNEIGH)
        return ()

    def _name(self, idx: int) -> tuple[str, ...]:
        link = self.links.get(idx)
        return (link.name,) if link is not None else ()

    def _link(self, msg: Any, new: bool) -> Iterable[str]:
        idx = int(msg["index"])
        old = self.links.get(idx)
        names = {old.name} if old is not None else set()
        if old is not None and self.index.get(old.name) == idx:
            del self.index[old.name]
        if not new:
            self.links.pop(idx, None)
            self.addrs.pop(idx, None)
            for key in [k for k in self.neigh if k[0] == idx]:
                del self.neigh[key]
            return names
        name = msg.get_attr("IFLA_IFNAME") or (old.name if old is not None else "")
        operstate = msg.get_attr("IFLA_OPERSTATE")
        self.links[idx] = _Iface(
            name=name,
            flags=int(msg["flags"]),
            operstate=str(operstate).lower() if operstate is not None else "unknown",
        )
        if name:
            self.index[name] = idx
            names.add(name)
        return names

    def _addr(self, msg: Any, new: bool) -> Iterable[str]:
        # IFA_LOCAL is our end; IFA_ADDRESS is the peer on point-to-point links.
        text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        ip = _ip(text) if text else None
        if ip is None:
            return ()
        idx = int(msg["index"])
        key = (str(ip), int(msg["prefixlen"]))
        flags = msg.get_attr("IFA_FLAGS")
        flags = int(msg["flags"] if flags is None else flags)
        if new and not flags & IFA_F_DADFAILED:  # a duplicate address is not ours to use
            self.addrs.setdefault(idx, set()).add(key)
        else:
            self.addrs.get(idx, set()).discard(key)
        return self._name(idx)

    def _neigh(self, msg: Any, new: bool) -> Iterable[str]:
        if msg["family"] not in (socket.AF_INET, socket.AF_INET6) or msg["flags"] & NTF_PROXY:
            return ()
        text = msg.get_attr("NDA_DST")
        ip = _ip(text) if text else None
        if ip is None or str(ip) not in self.gateways:
            return ()
        idx = int(msg["ifindex"])
        key = (idx, str(ip))
        if new:
            state = int(msg["state"])
            self.neigh[key] = _NUD.get(state, f"0x{state:02x}")
        else:
            self.neigh.pop(key, None)
        return self._name(idx)


class LinkWatcher:
    def __init__(
        self,
        specs: Sequence[LinkSpec],
        on_change: OnLink,
        *,
        log: FilteringBoundLogger | None = None,
        clock: Callable[[], float] = time.monotonic,
        netns: str | None = None,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("links: a link name is used twice")
        self._specs = tuple(specs)
        self._on_change = on_change
        self._log = log or get_logger("trunkguard.watch.links")
        self._clock = clock
        self._netns = netns
        self._by_if: dict[str, list[LinkSpec]] = {}
        for s in self._specs:
            self._by_if.setdefault(s.interface, []).append(s)
        # Neighbour entries are matched on the canonical text pyroute2 gives us.
        self._gw = {s.name: str(ip) for s in self._specs if s.gateway and (ip := _ip(s.gateway))}
        self._families = sorted(
            {socket.AF_INET6 if ":" in gw else socket.AF_INET for gw in self._gw.values()}
        )
        self._kernel = _Kernel(frozenset(self._gw.values()))
        self._status = {s.name: (False, "link state not read yet") for s in self._specs}
        self._reported: set[str] = set()

    def status(self) -> dict[str, tuple[bool, str]]:
        return dict(self._status)

    async def run(self) -> None:
        failures = 0
        while True:
            ipr: Any = None
            try:
                ipr = await self._open()
                await self._sync(ipr)
                if failures:
                    self._log.info("netlink resynced", attempts=failures)
                failures = 0
                await self._follow(ipr)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failures += 1
                error = _text(e)
                if failures == 1:
                    # A socket error is expected news; anything else is our bug: keep its trace.
                    trace = not isinstance(e, OSError | NetlinkError)
                    self._log.warning(
                        "netlink socket failed, resyncing", error=error, exc_info=trace
                    )
                else:
                    self._log.debug("netlink reopen failed", error=error, attempts=failures)
                    # The immediate retry failed too: what we last saw may be stale.
                    self._unknown(f"link state unknown (netlink: {error})")
            finally:
                if ipr is not None:
                    _close(ipr)
            if failures > 1:
                await asyncio.sleep(min(0.1 * 2 ** (failures - 2), RETRY_MAX))

    async def _open(self) -> Any:
        if self._netns is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
        else:
            # Entering a netns forks a helper in pyroute2; keep that off the loop.
            # flags=0: a missing namespace is an error, never silently created.
            try:
                sock = await asyncio.to_thread(
                    create_socket,
                    self._netns,
                    socket.AF_NETLINK,
                    socket.SOCK_DGRAM,
                    NETLINK_ROUTE,
                    flags=0,
                )
            except OSError as e:
                raise OSError(e.errno, f"netns {self._netns}: {e.strerror or e}") from e
        ipr = AsyncIPRoute(fileno=sock.detach(), groups=GROUPS)
        try:
            # Subscribe first: an event between a dump and the bind would be lost.
            await ipr.bind(groups=GROUPS)
            try:
                ipr.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except PermissionError:  # not root (CAP_NET_ADMIN): as much as rmem_max allows
                ipr.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except BaseException:
            _close(ipr)
            raise
        return ipr

    async def _sync(self, ipr: Any) -> None:
        """Dump into a fresh model, apply what arrived meanwhile, then report."""
        kernel = _Kernel(self._kernel.gateways)
        async for msg in await ipr.get_links():
            kernel.apply(msg)
        async for msg in await ipr.get_addr():
            kernel.apply(msg)
        for family in self._families:
            async for msg in await ipr.get_neighbours(family=family):
                kernel.apply(msg)
        # Notifications queued during the dumps may predate what the dumps saw; replaying
        # them in order before reporting converges without reporting a stale flap.
        # (Each queued item is one datagram; later ones are for _follow.)
        for _ in range(_backlog(ipr)):
            await self._receive(ipr, kernel.apply)
        self._kernel = kernel
        for spec in self._specs:
            self._derive(spec)

    async def _follow(self, ipr: Any) -> None:
        def apply(msg: Any) -> None:
            for name in self._kernel.apply(msg):
                for spec in self._by_if.get(name, ()):
                    self._derive(spec)

        while True:
            await self._receive(ipr, apply)

    async def _receive(self, ipr: Any, apply: Callable[[Any], object]) -> None:
        """Apply the messages of one datagram (broadcasts all queue under sequence 0)."""
        got = False
        async with aclosing(ipr.get()) as messages:
            async for msg in messages:
                got = True
                apply(msg)
        # get() ends empty when the socket was closed under us, or on a stray NLMSG_DONE
        # (a dump reply that lost its request); either way only a resync is safe.
        if not got:
            raise ConnectionError(errno.ECONNRESET, "netlink socket closed")

    def _derive(self, spec: LinkSpec) -> None:
        facts = self._kernel.facts(spec.interface, self._gw.get(spec.name))
        self._report(spec.name, link_status(spec, facts))

    def _unknown(self, reason: str) -> None:
        for spec in self._specs:
            self._report(spec.name, (False, reason))

    def _report(self, name: str, status: tuple[bool, str]) -> None:
        if name in self._reported and self._status[name] == status:
            return
        self._status[name] = status
        self._reported.add(name)
        try:
            self._on_change(name, status[0], status[1], self._clock())
        except Exception:
            self._log.exception("link on_change callback failed", link=name)


def _backlog(ipr: Any) -> int:
    # pyroute2 queues broadcasts (sequence 0) on this asyncio.Queue; it has no public
    # "pending" call, and awaiting get() on an empty queue would block.
    try:
        return int(ipr.msg_queue.root.qsize())
    except AttributeError:
        return 0


def _close(ipr: Any) -> None:
    with suppress(Exception):  # closing a socket that already failed may complain
        ipr.close()


def _text(e: BaseException) -> str:
    return str(e) or type(e).__name__
