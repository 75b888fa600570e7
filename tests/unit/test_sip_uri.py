from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trunkguard.sip.uri import SipUri, parse_uri


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:carrier.example.com", SipUri("sip", None, "carrier.example.com", None, ())),
        ("SIP:Carrier.Example.COM:5080", SipUri("sip", None, "carrier.example.com", 5080, ())),
        ("sip:192.0.2.1:5060", SipUri("sip", None, "192.0.2.1", 5060, ())),
        ("sip:[2001:db8::1]:5060", SipUri("sip", None, "2001:db8::1", 5060, ())),
        ("sip:[2001:DB8:0::1]", SipUri("sip", None, "2001:db8::1", None, ())),
        ("sips:+4930123@gw.example.net", SipUri("sips", "+4930123", "gw.example.net", None, ())),
        ("sip:alice:secret@h.example", SipUri("sip", "alice:secret", "h.example", None, ())),
        (
            "sip:h.example;Transport=TCP;lr",
            SipUri("sip", None, "h.example", None, (("transport", "TCP"), ("lr", None))),
        ),
        ("  sip:h.example.  ", SipUri("sip", None, "h.example.", None, ())),
    ],
)
def test_parse_valid(text: str, expected: SipUri) -> None:
    assert parse_uri(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("carrier.example.com", "not a SIP URI: missing 'sip:' scheme"),
        ("tel:+4930123", "not a SIP URI: missing 'sip:' scheme"),
        ("http://x", "not a SIP URI: missing 'sip:' scheme"),
        ("sip:h:99999", "bad port '99999'"),
        ("sip:h:0", "bad port '0'"),
        ("sip:h:", "bad port ''"),
        ("sip:h:50a", "bad port '50a'"),
        ("sip:", "missing host"),
        ("sip:@h", "empty user part before '@'"),
        ("sip:2001:db8::1", "IPv6 address must be in brackets: '[2001:db8::1]'"),
        ("sip:[2001:db8::1", "unterminated IPv6 literal: missing ']'"),
        ("sip:[2001:db8::g]", "bad IPv6 address '2001:db8::g'"),
        ("sip:[::1]x", "unexpected 'x' after IPv6 literal"),
        ("sip:300.1.1.1", "bad IPv4 address '300.1.1.1'"),
        ("sip:bad_host", "bad host name 'bad_host'"),
        ("sip:-x.example", "bad host name '-x.example'"),
        ("sip:h?subject=x", "URI headers ('?...') are not allowed in a probe target"),
        ("sip:h x", "URI contains whitespace or control characters"),
        ("sip:h;=x", "bad URI parameter ';=x'"),
        ("sip:h;transport=udp;transport=tcp", "duplicate URI parameter 'transport'"),
        ("sips:h;transport=udp", "sips: URI cannot use transport=udp"),
        ("sip:1.2.3.4:5060:", "bad host:port '1.2.3.4:5060:'"),
    ],
)
def test_parse_invalid_has_one_line_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_uri(text)
    assert str(err.value) == reason
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "transport"),
    [
        ("sip:h", "udp"),
        ("sips:h", "tls"),
        ("sip:h;transport=TCP", "tcp"),
        ("sips:h;transport=tcp", "tls"),
        ("sip:h;transport=tls", "tls"),
    ],
)
def test_transport(text: str, transport: str) -> None:
    assert parse_uri(text).transport == transport


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("SIP:GW.Example.com:5060;Transport=udp", "sip:gw.example.com:5060;transport=udp"),
        ("sip:[2001:0db8::0001]:5061", "sip:[2001:db8::1]:5061"),
        ("sips:u%40x@h;lr", "sips:u%40x@h;lr"),
    ],
)
def test_str_is_canonical_and_round_trips(text: str, canonical: str) -> None:
    uri = parse_uri(text)
    assert str(uri) == canonical
    assert parse_uri(str(uri)) == uri


@given(st.text(max_size=80))
def test_parse_only_raises_value_error(text: str) -> None:
    try:
        uri = parse_uri(text)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:
        assert parse_uri(str(uri)) == uri


_label = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)
_hosts = st.one_of(
    st.lists(_label, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: a.compressed),
)
_params = st.lists(
    st.tuples(
        st.sampled_from(["transport", "lr", "maddr", "x-y"]),
        st.one_of(st.none(), st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)),
    ),
    max_size=4,
    unique_by=lambda kv: kv[0],
)


@given(
    st.builds(
        SipUri,
        st.just("sip"),
        st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9+]{1,10}", fullmatch=True)),
        _hosts,
        st.one_of(st.none(), st.integers(1, 65535)),
        _params.map(tuple),
    )
)
def test_generated_uris_round_trip(uri: SipUri) -> None:
    assert parse_uri(str(uri)) == uri
