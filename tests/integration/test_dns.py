"""SipResolver (RFC 3263) against a real dnsmasq serving NAPTR, SRV, A and AAAA records."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lib.dnsmasq import DnsServer, dns_server
from trunkguard.sip.dns import Destination, DnsError, Resolution, SipResolver
from trunkguard.sip.uri import parse_uri

pytestmark = pytest.mark.integration

HOSTS = [
    "host-record=a.carrier.test,127.0.0.2",
    "host-record=b.carrier.test,::1",
    "host-record=c.carrier.test,127.0.0.3,::2",
]


def resolver(dns: DnsServer, **kw: object) -> SipResolver:
    return SipResolver(nameservers=dns.nameservers, port=dns.port, **kw)  # type: ignore[arg-type]


async def resolve(dns: DnsServer, uri: str, **kw: object) -> Resolution:
    return await resolver(dns, **kw).resolve(parse_uri(uri))


def dests(res: Resolution) -> list[tuple[str, str, int]]:
    return [(d.transport, d.host, d.port) for d in res.destinations]


@pytest.fixture
def naptr_dns(tmp_path: Path) -> Iterator[DnsServer]:
    """NAPTR prefers UDP (order 10) over TCP (order 20); UDP SRV has two targets."""
    with dns_server(
        tmp_path,
        records=[
            "naptr-record=carrier.test,10,50,s,SIP+D2U,,_sip._udp.carrier.test",
            "naptr-record=carrier.test,20,50,s,SIP+D2T,,_sip._tcp.carrier.test",
            "srv-host=_sip._udp.carrier.test,a.carrier.test,5070,10,60",
            "srv-host=_sip._udp.carrier.test,b.carrier.test,5080,20,0",
            "srv-host=_sip._tcp.carrier.test,a.carrier.test,5090,10,0",
            *HOSTS,
        ],
    ) as dns:
        yield dns


async def test_naptr_srv_chain_returns_v4_and_v6_targets(naptr_dns: DnsServer) -> None:
    res = await resolve(naptr_dns, "sip:carrier.test")
    assert dests(res) == [("udp", "127.0.0.2", 5070), ("udp", "::1", 5080)]
    assert {d.server_name for d in res.destinations} == {"carrier.test"}  # RFC 5922
    assert [d.key for d in res.destinations] == ["127.0.0.2:5070", "[::1]:5080"]
    queries = naptr_dns.wait_queries(6)
    assert queries[:2] == [("NAPTR", "carrier.test"), ("SRV", "_sip._udp.carrier.test")]
    assert ("SRV", "_sip._tcp.carrier.test") not in queries  # the winning NAPTR only
    assert {q for q in queries[2:]} == {
        ("A", "a.carrier.test"),
        ("AAAA", "a.carrier.test"),
        ("A", "b.carrier.test"),
        ("AAAA", "b.carrier.test"),
    }


async def test_srv_target_with_both_families(tmp_path: Path) -> None:
    with dns_server(
        tmp_path,
        records=[
            "srv-host=_sip._udp.carrier.test,c.carrier.test,5060,10,0",
            *HOSTS,
        ],
    ) as dns:
        res = await resolve(dns, "sip:carrier.test")
        assert dests(res) == [("udp", "127.0.0.3", 5060), ("udp", "::2", 5060)]
        only4 = await resolve(dns, "sip:carrier.test", families=(4,))
        assert dests(only4) == [("udp", "127.0.0.3", 5060)]
        assert ("AAAA", "c.carrier.test") in dns.wait_queries(1)
        only6 = await resolve(dns, "sip:carrier.test", families=(6,))
        assert dests(only6) == [("udp", "::2", 5060)]


@pytest.mark.parametrize(
    ("order_udp", "order_tcp", "expected"),
    [
        (20, 10, [("tcp", "127.0.0.2", 5090)]),
        (10, 20, [("udp", "127.0.0.2", 5070)]),
    ],
)
async def test_naptr_order_picks_transport(
    tmp_path: Path, order_udp: int, order_tcp: int, expected: list[tuple[str, str, int]]
) -> None:
    with dns_server(
        tmp_path,
        records=[
            # Preference would favour UDP; order is compared first.
            f"naptr-record=carrier.test,{order_udp},10,s,SIP+D2U,,_sip._udp.carrier.test",
            f"naptr-record=carrier.test,{order_tcp},90,s,SIP+D2T,,_sip._tcp.carrier.test",
            "srv-host=_sip._udp.carrier.test,a.carrier.test,5070,10,0",
            "srv-host=_sip._tcp.carrier.test,a.carrier.test,5090,10,0",
            *HOSTS,
        ],
    ) as dns:
        assert dests(await resolve(dns, "sip:carrier.test")) == expected


async def test_naptr_preference_within_order_and_unusable_records(tmp_path: Path) -> None:
    with dns_server(
        tmp_path,
        records=[
            "naptr-record=carrier.test,5,10,s,SIP+D2S,,_sip._sctp.carrier.test",  # unsupported
            "naptr-record=carrier.test,5,20,a,SIP+D2U,,a.carrier.test",  # flag a: not for us
            "naptr-record=carrier.test,10,60,s,SIP+D2U,,_sip._udp.carrier.test",
            "naptr-record=carrier.test,10,40,s,SIP+D2T,,_sip._tcp.carrier.test",
            "naptr-record=carrier.test,10,50,s,SIPS+D2T,,_sips._tcp.carrier.test",
            "srv-host=_sip._sctp.carrier.test,a.carrier.test,5000,10,0",
            "srv-host=_sip._udp.carrier.test,a.carrier.test,5070,10,0",
            "srv-host=_sip._tcp.carrier.test,a.carrier.test,5090,10,0",
            "srv-host=_sips._tcp.carrier.test,a.carrier.test,5091,10,0",
            *HOSTS,
        ],
    ) as dns:
        assert dests(await resolve(dns, "sip:carrier.test")) == [("tcp", "127.0.0.2", 5090)]
        # sips: only SIPS+D2T qualifies, whatever its preference
        res = await resolve(dns, "sips:carrier.test")
        assert dests(res) == [("tls", "127.0.0.2", 5091)]
        assert res.destinations[0].key == "127.0.0.2:5091;transport=tls"


async def test_naptr_whose_srv_is_empty_falls_to_next(tmp_path: Path) -> None:
    with dns_server(
        tmp_path,
        records=[
            "naptr-record=carrier.test,10,10,s,SIP+D2T,,_sip._tcp.carrier.test",  # no such SRV
            "naptr-record=carrier.test,20,10,s,SIP+D2U,,_sip._udp.carrier.test",
            "srv-host=_sip._udp.carrier.test,a.carrier.test,5070,10,0",
            *HOSTS,
        ],
    ) as dns:
        assert dests(await resolve(dns, "sip:carrier.test")) == [("udp", "127.0.0.2", 5070)]


async def test_no_naptr_srv_fallback_all_priorities_sorted(tmp_path: Path) -> None:
    with dns_server(
        tmp_path,
        records=[
            # listed out of order on purpose; a "." target means "no service here"
            "srv-host=_sip._udp.carrier.test,c.carrier.test,5062,20,5",
            "srv-host=_sip._udp.carrier.test,b.carrier.test,5061,10,10",
            "srv-host=_sip._udp.carrier.test,a.carrier.test,5060,10,50",
            "srv-host=_sip._udp.carrier.test,a.carrier.test,5060,30,0",  # duplicate address
            *HOSTS,
        ],
    ) as dns:
        res = await resolve(dns, "sip:carrier.test")
        assert dests(res) == [
            ("udp", "127.0.0.2", 5060),  # priority 10, weight 50
            ("udp", "::1", 5061),  # priority 10, weight 10
            ("udp", "127.0.0.3", 5062),
            ("udp", "::2", 5062),  # priority 20
        ]
        queries = dns.wait_queries(4)
        assert queries[0] == ("NAPTR", "carrier.test")
        assert set(queries[1:4]) == {
            ("SRV", "_sips._tcp.carrier.test"),
            ("SRV", "_sip._tcp.carrier.test"),
            ("SRV", "_sip._udp.carrier.test"),
        }


async def test_no_naptr_srv_prefers_tls_then_tcp_then_udp(tmp_path: Path) -> None:
    with dns_server(
        tmp_path,
        records=[
            "srv-host=_sip._udp.carrier.test,a.carrier.test,5070,10,0",
            "srv-host=_sip._tcp.carrier.test,a.carrier.test,5090,10,0",
            *HOSTS,
        ],
    ) as dns:
        assert dests(await resolve(dns, "sip:carrier.test")) == [("tcp", "127.0.0.2", 5090)]


async def test_no_srv_uses_a_with_default_port(tmp_path: Path) -> None:
    with dns_server(tmp_path, records=["host-record=carrier.test,127.0.0.4,::4"]) as dns:
        res = await resolve(dns, "sip:carrier.test")
        assert dests(res) == [("udp", "127.0.0.4", 5060), ("udp", "::4", 5060)]
        res = await resolve(dns, "sip:carrier.test;transport=tcp")
        assert dests(res) == [("tcp", "127.0.0.4", 5060), ("tcp", "::4", 5060)]
        res = await resolve(dns, "sip:carrier.test;transport=tls")
        assert dests(res) == [("tls", "127.0.0.4", 5061), ("tls", "::4", 5061)]


async def test_transport_param_skips_naptr(naptr_dns: DnsServer) -> None:
    res = await resolve(naptr_dns, "sip:carrier.test;transport=tcp")
    assert dests(res) == [("tcp", "127.0.0.2", 5090)]
    queries = naptr_dns.wait_queries(3)
    assert queries[0] == ("SRV", "_sip._tcp.carrier.test")
    assert all(kind != "NAPTR" for kind, _ in queries)


async def test_explicit_port_queries_only_a_and_aaaa(tmp_path: Path) -> None:
    with dns_server(
        tmp_path,
        records=[
            "naptr-record=carrier.test,10,50,s,SIP+D2U,,_sip._udp.carrier.test",
            "srv-host=_sip._udp.carrier.test,a.carrier.test,5070,10,0",
            "srv-host=_sip._tcp.carrier.test,a.carrier.test,5090,10,0",
            "host-record=carrier.test,127.0.0.5",
            *HOSTS,
        ],
    ) as dns:
        res = await resolve(dns, "sip:carrier.test:5099")
        assert dests(res) == [("udp", "127.0.0.5", 5099)]
        res = await resolve(dns, "sip:carrier.test:5099;transport=tcp")
        assert dests(res) == [("tcp", "127.0.0.5", 5099)]
        dns.wait_queries(4)
        await asyncio.sleep(0.2)  # let any straggler reach the log
        expected = [("A", "carrier.test"), ("AAAA", "carrier.test")] * 2
        assert sorted(dns.queries()) == sorted(expected)
        assert "query[SRV]" not in dns.log_text() and "query[NAPTR]" not in dns.log_text()


async def test_sips_uses_only_sips_srv_and_port_5061(tmp_path: Path) -> None:
    with dns_server(
        tmp_path,
        records=[
            "naptr-record=carrier.test,10,10,s,SIP+D2U,,_sip._udp.carrier.test",
            "srv-host=_sip._udp.carrier.test,a.carrier.test,5070,10,0",
            "srv-host=_sip._tcp.carrier.test,a.carrier.test,5090,10,0",
            "host-record=carrier.test,127.0.0.6",
            *HOSTS,
        ],
    ) as dns:
        # NAPTR has only SIP+D2U (unusable for sips), no _sips._tcp SRV: A record, 5061, TLS
        res = await resolve(dns, "sips:carrier.test")
        assert dests(res) == [("tls", "127.0.0.6", 5061)]
        assert res.destinations[0].server_name == "carrier.test"
        await asyncio.sleep(0.2)
        srv = [name for kind, name in dns.queries() if kind == "SRV"]
        assert srv == ["_sips._tcp.carrier.test"]


async def test_sips_srv(tmp_path: Path) -> None:
    with dns_server(
        tmp_path,
        records=[
            "srv-host=_sips._tcp.carrier.test,b.carrier.test,5081,10,0",
            *HOSTS,
        ],
    ) as dns:
        res = await resolve(dns, "sips:carrier.test")
        assert dests(res) == [("tls", "::1", 5081)]
        assert res.destinations[0].key == "[::1]:5081;transport=tls"


async def test_nxdomain_is_a_one_line_error(tmp_path: Path) -> None:
    with dns_server(tmp_path, records=HOSTS) as dns:
        with pytest.raises(DnsError) as err:
            await resolve(dns, "sip:nowhere.test")
        assert str(err.value) == "nowhere.test: no SRV/A/AAAA records (NXDOMAIN)"
        with pytest.raises(DnsError) as err:
            await resolve(dns, "sip:nowhere.test:5060")
        assert str(err.value) == "nowhere.test: no A/AAAA records (NXDOMAIN)"
        with pytest.raises(DnsError) as err:  # exists, but IPv6 only
            await resolve(dns, "sip:b.carrier.test", families=(4,))
        assert str(err.value) == "b.carrier.test: no SRV/A records"


async def test_srv_targets_without_addresses(tmp_path: Path) -> None:
    with dns_server(
        tmp_path,
        records=[
            "srv-host=_sip._udp.carrier.test,gone.carrier.test,5060,10,0",
            "srv-host=_sip._udp.carrier.test,a.carrier.test,5070,20,0",
            *HOSTS,
        ],
    ) as dns:  # a dead target is skipped, the others still count
        assert dests(await resolve(dns, "sip:carrier.test")) == [("udp", "127.0.0.2", 5070)]
    # no target resolves and carrier.test has no A: an error, never an empty list
    with (
        dns_server(
            tmp_path,
            records=[
                "srv-host=_sip._udp.carrier.test,gone.carrier.test,5060,10,0",
            ],
        ) as dns,
        pytest.raises(DnsError, match=r"^carrier\.test: no SRV/A/AAAA records"),
    ):
        await resolve(dns, "sip:carrier.test")


async def test_refused_is_an_error(tmp_path: Path) -> None:
    with dns_server(tmp_path, records=HOSTS, local_domains=()) as dns:
        with pytest.raises(DnsError) as err:
            await resolve(dns, "sip:carrier.example")
        text = str(err.value)
        assert text.startswith("carrier.example: ") and "REFUSED" in text and "\n" not in text


async def test_silent_nameserver_times_out(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        r = SipResolver(nameservers=["127.0.0.1"], port=port, timeout=0.5)
        start = time.monotonic()
        with pytest.raises(DnsError) as err:
            await r.resolve(parse_uri("sip:carrier.test"))
        elapsed = time.monotonic() - start
        assert str(err.value) == "carrier.test: resolver timeout after 0.5s"
        assert 0.45 <= elapsed < 0.9, elapsed
        silent.setblocking(False)
        assert silent.recv(512)  # it really asked


async def test_ttl_sets_expiry_and_is_clamped(tmp_path: Path) -> None:
    now = [1000.0]
    with dns_server(
        tmp_path,
        records=[
            "local-ttl=30",
            "naptr-record=carrier.test,10,50,s,SIP+D2U,,_sip._udp.carrier.test",
            "srv-host=_sip._udp.carrier.test,a.carrier.test,5060,10,0",
            "srv-host=_sip._udp.carrier.test,d.carrier.test,5060,20,0",
            "host-record=a.carrier.test,127.0.0.2",
            "host-record=d.carrier.test,127.0.0.7,12",  # its own, lower TTL
            "host-record=e.carrier.test,127.0.0.8",
        ],
    ) as dns:
        res = await resolve(dns, "sip:carrier.test", clock=lambda: now[0])
        assert res.expires_at == 1012.0  # min over NAPTR 30, SRV 30, A 30 and 12
        res = await resolve(dns, "sip:e.carrier.test:5060", clock=lambda: now[0])
        assert res.expires_at == 1030.0
        res = await resolve(dns, "sip:e.carrier.test:5060", clock=lambda: now[0], max_ttl=20)
        assert res.expires_at == 1020.0
        res = await resolve(dns, "sip:carrier.test", clock=lambda: now[0], min_ttl=15)
        assert res.expires_at == 1015.0
    with dns_server(tmp_path, records=["host-record=e.carrier.test,127.0.0.8"]) as dns:
        # dnsmasq's default TTL 0 ("do not cache"): clamped up to min_ttl
        res = await resolve(dns, "sip:e.carrier.test", clock=lambda: now[0], min_ttl=5)
        assert res.expires_at == 1005.0


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:192.0.2.1", Destination("udp", "192.0.2.1", 5060, "192.0.2.1")),
        ("sip:192.0.2.1:5080;transport=tcp", Destination("tcp", "192.0.2.1", 5080, "192.0.2.1")),
        ("sip:192.0.2.1;transport=tls", Destination("tls", "192.0.2.1", 5061, "192.0.2.1")),
        ("sips:[2001:db8::1]", Destination("tls", "2001:db8::1", 5061, "2001:db8::1")),
    ],
)
async def test_ip_literal_needs_no_dns(uri: str, expected: Destination) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        r = SipResolver(nameservers=["127.0.0.1"], port=silent.getsockname()[1], timeout=0.5)
        res = await r.resolve(parse_uri(uri))
        assert res.destinations == (expected,)
        assert res.expires_at == math.inf
        await asyncio.sleep(0.05)
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):  # not a single packet reached the "server"
            silent.recv(512)


async def test_ip_literal_of_disabled_family() -> None:
    r = SipResolver(nameservers=["127.0.0.1"], families=(4,))
    with pytest.raises(DnsError, match=r"^2001:db8::1: IPv6 is disabled$"):
        await r.resolve(parse_uri("sip:[2001:db8::1]"))


async def test_unsupported_transport() -> None:
    r = SipResolver(nameservers=["127.0.0.1"])
    with pytest.raises(DnsError, match="transport 'sctp' is not supported"):
        await r.resolve(parse_uri("sip:192.0.2.1;transport=sctp"))


async def test_destinations_are_capped(tmp_path: Path) -> None:
    records = [f"srv-host=_sip._udp.carrier.test,h{i}.carrier.test,5060,{i},0" for i in range(20)]
    records += [f"host-record=h{i}.carrier.test,127.0.1.{i}" for i in range(20)]
    with dns_server(tmp_path, records=records) as dns:
        res = await resolve(dns, "sip:carrier.test")
        assert len(res.destinations) == 16
        assert res.destinations[0].host == "127.0.1.0"
