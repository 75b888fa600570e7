"""RFC 3263 client resolution: a SIP URI to the (transport, address, port) list to probe.

IP literal: no DNS at all. Host name with a port: A/AAAA only. Host name without a
port: with a transport parameter, the SRV records of that transport; otherwise NAPTR
(SIP+D2U, SIP+D2T, SIPS+D2T, flag "s"; by order then preference, the first record whose
SRV owner resolves wins), else SRV for _sips._tcp, _sip._tcp, _sip._udp (first that
has records wins; sips: only _sips._tcp), else A/AAAA with the default port.

Unlike a call-routing stack, which picks one destination and fails over on error, a
prober wants every destination: all SRV targets of all priorities, each with all its
IPv4 and IPv6 addresses, are returned in SRV order (priority, then weight descending).
The TTLs of the records used bound `Resolution.expires_at`; the caller resolves again
then. Nothing is cached here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import dns.exception
import dns.name
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.NAPTR
import dns.rdtypes.IN.SRV
import dns.resolver
from dns import asyncresolver

from trunkguard.sip.uri import SipUri

MAX_DESTINATIONS = 16  # bound the work a hostile or broken zone can cause
MAX_RECORDS = 16  # NAPTR / SRV records considered per lookup
TRANSPORTS = ("udp", "tcp", "tls")
_DEFAULT_PORT = {"udp": 5060, "tcp": 5060, "tls": 5061}
_NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
_T = TypeVar("_T")
_SRV_PREFIX = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}


@dataclass(frozen=True, slots=True)
class Destination:
    """One place to probe. `server_name` is what a TLS certificate must match (RFC 5922:
    the URI's host name, not the SRV target), or the IP for an IP-literal URI."""

    transport: str  # "udp" | "tcp" | "tls"
    host: str  # IP literal (IPv6 without brackets)
    port: int
    server_name: str

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"unsupported transport '{self.transport}'")
        ipaddress.ip_address(self.host)  # ValueError if not an IP literal
        if not 0 < self.port <= 65535:
            raise ValueError(f"bad port {self.port}")

    @property
    def key(self) -> str:
        """Stable label, e.g. `192.0.2.1:5060` or `[2001:db8::1]:5061;transport=tls`.

        Safe as an MQTT topic segment and a metric label: no '/', '+' or '#'."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"{host}:{self.port}{suffix}"


@dataclass(frozen=True)
class Resolution:
    destinations: tuple[Destination, ...]
    expires_at: float  # on the resolver's clock; +inf for IP literals


class DnsError(Exception):
    """Resolution failed; str() is one line naming the host and the reason."""


@dataclass
class _Answer:
    records: list[object]
    ttl: float | None  # None: no records (NXDOMAIN or NODATA)
    nxdomain: bool = False


@dataclass
class _Ctx:
    """State of one resolve() call: deadline, the URI host, the TTLs seen."""

    host: str
    deadline: float
    ttls: list[float]
    nxdomain: bool = False  # the URI host itself does not exist


class SipResolver:
    def __init__(
        self,
        *,
        nameservers: Sequence[str] | None = None,
        port: int = 53,
        timeout: float = 2.0,
        min_ttl: float = 5.0,
        max_ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        families: tuple[int, ...] = (4, 6),
        hosts_file: str = "/etc/hosts",
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError(f"need 0 <= min_ttl <= max_ttl, got {min_ttl} and {max_ttl}")
        if not families or any(f not in (4, 6) for f in families):
            raise ValueError(f"families must be a non-empty subset of (4, 6), got {families}")
        self._timeout = timeout
        self._min_ttl, self._max_ttl = min_ttl, max_ttl
        self._clock = clock
        self._families = tuple(dict.fromkeys(families))
        self._config_error: str | None = None
        # Like nsswitch's "files dns": with the system resolver, /etc/hosts names win, so
        # `sip:localhost:5080` and other local names keep working.
        self._hosts = _read_hosts(hosts_file) if nameservers is None else {}
        if nameservers is None:  # the system's /etc/resolv.conf, read once, here
            try:
                self._dns = asyncresolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration as exc:  # reported by resolve()
                self._dns = asyncresolver.Resolver(configure=False)
                self._config_error = _one_line(str(exc)) or "no nameservers configured"
        else:
            self._dns = asyncresolver.Resolver(configure=False)
            self._dns.port = port  # before nameservers: the setter applies the port
            self._dns.nameservers = [str(ipaddress.ip_address(ns)) for ns in nameservers]
        # One retransmission within the budget; `lifetime` (per query) is the hard bound.
        self._dns.timeout = max(timeout / 2, 0.05)
        self._dns.lifetime = timeout
        self._dns.cache = None

    async def resolve(self, uri: SipUri) -> Resolution:
        """Resolve `uri` within `timeout` seconds; raise DnsError on any failure."""
        now = self._clock()
        transport = uri.transport
        if transport not in TRANSPORTS:
            raise DnsError(f"{uri.host}: transport '{transport}' is not supported")
        explicit = uri.param("transport") is not None
        literal = _ip(uri.host)
        if literal is not None:
            if literal.version not in self._families:
                raise DnsError(f"{uri.host}: IPv{literal.version} is disabled")
            port = uri.port or _DEFAULT_PORT[transport]
            dest = Destination(transport, str(literal), port, str(literal))
            return Resolution((dest,), math.inf)
        hosted = [
            ip
            for ip in self._hosts.get(uri.host.rstrip(".").lower(), [])
            if ip.version in self._families
        ]
        if hosted:
            port = uri.port or _DEFAULT_PORT[transport]
            local = tuple(Destination(transport, str(ip), port, uri.host) for ip in hosted)
            return Resolution(local, now + self._max_ttl)
        if self._config_error is not None:
            raise DnsError(f"{uri.host}: {self._config_error}")
        loop = asyncio.get_running_loop()
        ctx = _Ctx(uri.host.rstrip("."), loop.time() + self._timeout, [])
        try:
            # Safety net only: every query carries the remaining time as its lifetime.
            async with asyncio.timeout(self._timeout + 0.25):
                dests = await self._resolve_name(uri, transport, explicit, ctx)
        except TimeoutError:
            raise DnsError(self._timeout_text(ctx)) from None
        dests = list(dict.fromkeys(dests))[:MAX_DESTINATIONS]
        if not dests:  # _resolve_name raises first; keep the promise regardless
            raise DnsError(f"{ctx.host}: no usable destinations")
        ttl = min(ctx.ttls) if ctx.ttls else self._max_ttl
        ttl = min(max(ttl, self._min_ttl), self._max_ttl)
        return Resolution(tuple(dests), now + ttl)

    async def _resolve_name(
        self, uri: SipUri, transport: str, explicit: bool, ctx: _Ctx
    ) -> list[Destination]:
        if uri.port is not None:  # RFC 3263 4.2: a port means A/AAAA only
            return await self._by_address(ctx, transport, uri.port, "A/AAAA")
        if explicit:  # 4.1: transport given, no NAPTR; 4.2: SRV for that transport
            dests = await self._by_srv(ctx, [transport])
            if dests:
                return dests
            return await self._by_address(ctx, transport, _DEFAULT_PORT[transport], "SRV/A/AAAA")
        allowed = ["tls"] if uri.scheme == "sips" else ["tls", "tcp", "udp"]
        dests = await self._by_naptr(ctx, allowed)
        if dests:
            return dests
        dests = await self._by_srv(ctx, allowed)
        if dests:
            return dests
        return await self._by_address(ctx, transport, _DEFAULT_PORT[transport], "SRV/A/AAAA")

    async def _by_naptr(self, ctx: _Ctx, allowed: list[str]) -> list[Destination]:
        answer = await self._query(ctx, ctx.host, "NAPTR")
        usable: list[tuple[int, int, str, dns.name.Name]] = []
        for rd in answer.records:
            if not isinstance(rd, dns.rdtypes.IN.NAPTR.NAPTR):
                continue
            service = rd.service.decode("ascii", "replace").upper()
            transport = _NAPTR_SERVICES.get(service)
            if (
                transport in allowed
                and rd.flags.lower() == b"s"
                and rd.replacement != dns.name.root
            ):
                usable.append((rd.order, rd.preference, transport, rd.replacement))
        if not usable:
            return []  # RFC 3263 4.1: no (usable) NAPTR, go on with SRV
        assert answer.ttl is not None
        ctx.ttls.append(answer.ttl)
        usable.sort(key=lambda u: (u[0], u[1]))
        for _order, _pref, transport, owner in usable[:MAX_RECORDS]:
            dests = await self._srv_owner(ctx, owner.to_text(), transport)
            if dests:
                return dests
        return []

    async def _by_srv(self, ctx: _Ctx, transports: list[str]) -> list[Destination]:
        """SRV for each transport in preference order (queried together); the first
        transport with usable records wins."""
        names = [f"{_SRV_PREFIX[t]}.{ctx.host}." for t in transports]
        answers = await _gather([self._query(ctx, n, "SRV") for n in names])
        for transport, answer in zip(transports, answers, strict=True):
            dests = await self._srv_targets(ctx, answer, transport)
            if dests:
                return dests
        return []

    async def _srv_owner(self, ctx: _Ctx, owner: str, transport: str) -> list[Destination]:
        return await self._srv_targets(ctx, await self._query(ctx, owner, "SRV"), transport)

    async def _srv_targets(self, ctx: _Ctx, answer: _Answer, transport: str) -> list[Destination]:
        srvs = [
            rd
            for rd in answer.records
            if isinstance(rd, dns.rdtypes.IN.SRV.SRV) and rd.target != dns.name.root and rd.port > 0
        ]  # "." = no service
        if not srvs:
            return []
        # Deterministic: priority ascending, weight descending (not RFC 2782's weighted
        # random pick: every target is probed anyway), then target and port.
        srvs.sort(key=lambda r: (r.priority, -r.weight, r.target.to_text(), r.port))
        del srvs[MAX_RECORDS:]
        targets = list(dict.fromkeys(rd.target.to_text() for rd in srvs))
        found = await _gather([self._addresses(ctx, t) for t in targets])
        addrs = dict(zip(targets, found, strict=True))
        dests = [
            Destination(transport, ip, rd.port, ctx.host)
            for rd in srvs
            for ip in addrs[rd.target.to_text()]
        ]
        if dests:
            assert answer.ttl is not None
            ctx.ttls.append(answer.ttl)
        return dests

    async def _by_address(
        self, ctx: _Ctx, transport: str, port: int, looked_for: str
    ) -> list[Destination]:
        ips = await self._addresses(ctx, ctx.host + ".", nxdomain_fatal=True)
        if not ips:
            families = "/".join("A" if f == 4 else "AAAA" for f in self._families)
            wanted = looked_for.replace("A/AAAA", families)
            why = " (NXDOMAIN)" if ctx.nxdomain else ""
            raise DnsError(f"{ctx.host}: no {wanted} records{why}")
        return [Destination(transport, ip, port, ctx.host) for ip in ips]

    async def _addresses(self, ctx: _Ctx, name: str, *, nxdomain_fatal: bool = False) -> list[str]:
        """A then AAAA addresses of `name` (queried together), per `families`."""
        kinds = [("A" if f == 4 else "AAAA") for f in self._families]
        answers = await _gather([self._query(ctx, name, k) for k in kinds])
        ips: list[str] = []
        for answer in answers:
            for rd in answer.records:
                if isinstance(rd, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA):
                    ips.append(str(ipaddress.ip_address(rd.address)))
            if answer.records and answer.ttl is not None:
                ctx.ttls.append(answer.ttl)
        if nxdomain_fatal and not ips and all(a.nxdomain for a in answers):
            ctx.nxdomain = True
        return sorted(set(ips), key=ips.index)

    async def _query(self, ctx: _Ctx, name: str, rdtype: str) -> _Answer:
        remaining = ctx.deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise DnsError(self._timeout_text(ctx))
        try:
            answer = await self._dns.resolve(
                name, rdtype, raise_on_no_answer=False, lifetime=remaining, search=False
            )
        except dns.resolver.NXDOMAIN:
            return _Answer([], None, nxdomain=True)
        except dns.exception.Timeout:
            raise DnsError(self._timeout_text(ctx)) from None
        except dns.resolver.NoNameservers as exc:
            detail = str(exc).rpartition(": ")[2]
            raise DnsError(
                f"{ctx.host}: {rdtype} {name.rstrip('.')}: {_one_line(detail)}"
            ) from None
        except dns.exception.DNSException as exc:
            raise DnsError(
                f"{ctx.host}: {rdtype} {name.rstrip('.')}: {_one_line(str(exc))}"
            ) from None
        if answer.rrset is None:
            return _Answer([], None)
        return _Answer(list(answer.rrset), float(answer.chaining_result.minimum_ttl))

    def _timeout_text(self, ctx: _Ctx) -> str:
        return f"{ctx.host}: resolver timeout after {self._timeout:g}s"


async def _gather(aws: list[Coroutine[Any, Any, _T]]) -> list[_T]:
    """Run together; raise the first failure (a DnsError by preference) once all ended."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise next((e for e in errors if isinstance(e, DnsError)), errors[0])
    return cast(list[_T], results)


def _read_hosts(path: str) -> dict[str, list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """name -> addresses from a hosts file; unreadable or odd lines are skipped."""
    out: dict[str, list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
    try:
        text = open(path, encoding="utf-8", errors="replace").read()  # noqa: SIM115
    except OSError:
        return out
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        ip = _ip(fields[0]) if fields else None
        if ip is None or (ip.is_link_local and ip.version == 6):
            continue
        for name in fields[1:]:
            out.setdefault(name.lower(), []).append(ip)
    return out


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _one_line(text: str) -> str:
    return " ".join(text.split())
