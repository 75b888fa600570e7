"""Destination.key: a stable label that is safe as an MQTT topic segment."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trunkguard.sip.dns import Destination


@pytest.mark.parametrize(
    ("dest", "key"),
    [
        (Destination("udp", "192.0.2.1", 5060, "carrier.test"), "192.0.2.1:5060"),
        (Destination("tcp", "192.0.2.1", 5060, "carrier.test"), "192.0.2.1:5060;transport=tcp"),
        (Destination("tls", "192.0.2.1", 5061, "carrier.test"), "192.0.2.1:5061;transport=tls"),
        (Destination("udp", "2001:db8::1", 5060, "2001:db8::1"), "[2001:db8::1]:5060"),
        (Destination("tls", "::1", 5061, "carrier.test"), "[::1]:5061;transport=tls"),
    ],
)
def test_key(dest: Destination, key: str) -> None:
    assert dest.key == key


def test_key_ignores_server_name() -> None:
    a = Destination("udp", "192.0.2.1", 5060, "a.test")
    b = Destination("udp", "192.0.2.1", 5060, "b.test")
    assert a.key == b.key
    assert a != b  # but they are different destinations (TLS name differs)


def test_hashable_and_frozen() -> None:
    d = Destination("udp", "192.0.2.1", 5060, "a.test")
    assert {d, Destination("udp", "192.0.2.1", 5060, "a.test")} == {d}
    with pytest.raises(AttributeError):
        d.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("transport", "host", "port"),
    [
        ("sctp", "192.0.2.1", 5060),
        ("udp", "carrier.test", 5060),
        ("udp", "192.0.2.1", 0),
        ("udp", "192.0.2.1", 65536),
        ("udp", "[::1]", 5060),
    ],
)
def test_rejects_bad_fields(transport: str, host: str, port: int) -> None:
    with pytest.raises(ValueError):
        Destination(transport, host, port, "x")


@given(
    st.sampled_from(["udp", "tcp", "tls"]),
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    st.integers(1, 65535),
)
def test_key_is_topic_safe_and_round_trips(
    transport: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    key = Destination(transport, str(ip), port, "x").key
    assert not set(key) & set("/+#") and key.isprintable() and " " not in key
    hostport, _, params = key.partition(";")
    host, _, port_text = hostport.rpartition(":")
    assert ipaddress.ip_address(host.strip("[]")) == ip
    assert int(port_text) == port
    assert params == ("" if transport == "udp" else f"transport={transport}")


async def test_system_resolver_reads_hosts_file_first(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from trunkguard.sip.dns import SipResolver
    from trunkguard.sip.uri import parse_uri

    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost sbc.local\n::1 localhost ip6-localhost\n# 10.0.0.1 x\n")
    r = SipResolver(hosts_file=str(hosts))
    res = await r.resolve(parse_uri("sip:sbc.local:5080"))
    assert [d.key for d in res.destinations] == ["127.0.0.1:5080"]
    res = await r.resolve(parse_uri("sip:localhost;transport=tcp"))
    keys = [d.key for d in res.destinations]
    assert keys == ["127.0.0.1:5060;transport=tcp", "[::1]:5060;transport=tcp"]
