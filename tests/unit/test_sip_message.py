from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trunkguard.sip.message import (
    OptionsTemplate,
    _head,
    build_options,
    build_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_request,
    parse_response,
)


def options(**kw: object) -> bytes:
    args: dict[str, object] = dict(
        request_uri="sip:192.0.2.1:5060",
        via_host="192.0.2.2",
        via_port=40000,
        branch="z9hG4bKabc123",
        call_id="cid1@192.0.2.2",
        from_uri="sip:trunkguard@192.0.2.2",
        from_tag="ft1",
        to_uri="sip:192.0.2.1:5060",
        cseq=1,
        contact="sip:trunkguard@192.0.2.2:40000",
        user_agent="trunkguard/0.1",
    )
    args.update(kw)
    return build_options(**args)  # type: ignore[arg-type]


RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.2:40000;rport=40000;branch=z9hG4bKabc123;received=192.0.2.2\r\n"
    b"From: <sip:trunkguard@192.0.2.2>;tag=ft1\r\n"
    b"To: <sip:192.0.2.1:5060>;tag=tt1\r\n"
    b"Call-ID: cid1@192.0.2.2\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_build_options_layout() -> None:
    msg = options()
    assert msg.endswith(b"\r\n\r\n")
    lines = msg.decode().split("\r\n")[:-2]
    assert lines == [
        "OPTIONS sip:192.0.2.1:5060 SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.2:40000;rport;branch=z9hG4bKabc123",
        "Max-Forwards: 70",
        "From: <sip:trunkguard@192.0.2.2>;tag=ft1",
        "To: <sip:192.0.2.1:5060>",
        "Call-ID: cid1@192.0.2.2",
        "CSeq: 1 OPTIONS",
        "Contact: <sip:trunkguard@192.0.2.2:40000>",
        "Accept: application/sdp",
        "User-Agent: trunkguard/0.1",
        "Content-Length: 0",
    ]
    assert b"\n" not in msg.replace(b"\r\n", b"")


def test_build_options_brackets_ipv6_via() -> None:
    assert b"Via: SIP/2.0/UDP [2001:db8::2]:5060;rport;" in options(
        via_host="2001:db8::2", via_port=5060
    )


@pytest.mark.parametrize("field", ["call_id", "user_agent", "from_tag", "request_uri"])
def test_build_options_refuses_header_injection(field: str) -> None:
    with pytest.raises(ValueError):
        options(**{field: "x\r\nEvil: 1"})


def test_ids_are_fresh() -> None:
    branches = {new_branch() for _ in range(1000)}
    assert len(branches) == 1000 and all(b.startswith("z9hG4bK") for b in branches)
    assert new_tag() != new_tag()
    assert new_call_id("192.0.2.2").endswith("@192.0.2.2")


def test_parse_response_fields() -> None:
    r = parse_response(RESPONSE)
    assert r is not None
    assert (r.code, r.phrase, r.via_branch, r.call_id, r.cseq_num, r.cseq_method) == (
        200,
        "OK",
        "z9hG4bKabc123",
        "cid1@192.0.2.2",
        1,
        "OPTIONS",
    )
    assert r.retry_after is None
    assert r.header("TO") == "<sip:192.0.2.1:5060>;tag=tt1"
    assert r.header("t") == r.header("to")


def test_parse_response_compact_case_folding_and_first_via() -> None:
    data = (
        b"sip/2.0 503 Service  Unavailable\r\n"
        b"v: SIP/2.0/UDP 192.0.2.2:40000;BRANCH=z9hG4bKfirst,\r\n"
        b" SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKsecond\r\n"
        b"VIA: SIP/2.0/UDP 192.0.2.8;branch=z9hG4bKthird\r\n"
        b"i: cid2\r\n"
        b"cseq:   7\r\n\tOPTIONS\r\n"
        b"f: <sip:a@b>;tag=1\r\nt: <sip:c@d>\r\n"
        b"Retry-After: 120 (maintenance);duration=3600\r\n"
        b"l: 0\r\n\r\n"
    )
    r = parse_response(data)
    assert r is not None
    assert (r.code, r.phrase, r.via_branch, r.call_id, r.cseq_num, r.cseq_method) == (
        503,
        "Service  Unavailable",
        "z9hG4bKfirst",
        "cid2",
        7,
        "OPTIONS",
    )
    assert r.retry_after == 120
    assert [k for k, _ in r.headers].count("via") == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"30", 30),
        (b" 0 ", 0),
        (b"18000;duration=3600", 18000),
        (b"120 (I'm away)", 120),
        (b"soon", None),
        (b"", None),
        (b"99999999999", None),
        (b"-5", None),
    ],
)
def test_retry_after(value: bytes, expected: int | None) -> None:
    data = RESPONSE.replace(b"Content-Length", b"Retry-After: " + value + b"\r\nContent-Length")
    r = parse_response(data)
    assert r is not None and r.retry_after == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"SIP/2.0 099 Too Low\r\n\r\n",
        b"SIP/2.0 700 Too High\r\n\r\n",
        b"SIP/2.0 20 OK\r\n\r\n",
        b"SIP/2.0 2000 OK\r\n\r\n",
        b"SIP/3.0 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\n\r\n",
        b"SIP/2.0 200 OK\r\n folded-first: x\r\n\r\n",
        b"SIP/2.0 200 OK\r\nno colon here\r\n\r\n",
        b"SIP/2.0 200 OK\r\nbad name: x\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: \xff\xfe\r\n\r\n",
        b"SIP/2.0 200 OK\r\nX: a\0b\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: a\rb\r\n\r\n",
        b"\x00" * 100,
        b"SIP/2.0 200 OK\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n",
    ],
)
def test_parse_response_rejects(data: bytes) -> None:
    assert parse_response(data) is None


def test_parse_response_missing_headers_gives_none_fields() -> None:
    # well-formed but unmatchable: the prober reports it as a mismatch, not as garbage
    bare = parse_response(b"SIP/2.0 200 OK")
    assert bare is not None and bare.call_id is None and bare.via_branch is None
    r = parse_response(b"SIP/2.0 200 OK\r\nCSeq: x OPTIONS\r\n\r\n")
    assert r is not None
    assert (r.via_branch, r.call_id, r.cseq_num, r.cseq_method) == (None, None, None, None)


def test_parse_request_and_build_response_round_trip() -> None:
    req = parse_request(options())
    assert req is not None
    assert (req.method, req.uri, req.via_branch, req.call_id, req.cseq_num, req.cseq_method) == (
        "OPTIONS",
        "sip:192.0.2.1:5060",
        "z9hG4bKabc123",
        "cid1@192.0.2.2",
        1,
        "OPTIONS",
    )
    resp = parse_response(build_response(req, 404, "Not Found", "tt9"))
    assert resp is not None
    assert (resp.code, resp.phrase, resp.via_branch, resp.call_id, resp.cseq_num) == (
        404,
        "Not Found",
        "z9hG4bKabc123",
        "cid1@192.0.2.2",
        1,
    )
    assert resp.header("to") == "<sip:192.0.2.1:5060>;tag=tt9"
    assert resp.header("from") == "<sip:trunkguard@192.0.2.2>;tag=ft1"


def test_build_response_copies_all_vias_in_order_and_keeps_existing_tag() -> None:
    data = (
        b"OPTIONS sip:x SIP/2.0\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1\r\n"
        b"Via: SIP/2.0/UDP b;branch=z9hG4bK2, SIP/2.0/UDP c;branch=z9hG4bK3\r\n"
        b"f: <sip:a@b>;tag=1\r\nt: sip:c@d;tag=already\r\ni: c\r\nCSeq: 2 OPTIONS\r\n\r\n"
    )
    req = parse_request(data)
    assert req is not None
    text = build_response(req, 200, "OK", "new").decode()
    assert text.index("branch=z9hG4bK1") < text.index("branch=z9hG4bK2") < text.index("bK3")
    assert "To: sip:c@d;tag=already\r\n" in text and "new" not in text
    with pytest.raises(ValueError):
        build_response(req, 42, "x", "t")


@pytest.mark.parametrize(
    "data",
    [
        b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\n\r\n",  # no From/To/Call-ID/CSeq
        b"OPTIONS sip:x\r\n\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",
        b"OPTIONS sip:x y SIP/2.0\r\n\r\n",
    ],
)
def test_parse_request_rejects(data: bytes) -> None:
    assert parse_request(data) is None


@settings(max_examples=500)
@given(st.binary(max_size=2000))
def test_parsers_never_raise_on_arbitrary_bytes(data: bytes) -> None:
    parse_response(data)
    parse_request(data)


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(
                st.sampled_from(
                    [
                        b"\r\n",
                        b" ",
                        b":",
                        b",",
                        b";",
                        b"\x00",
                        b"\xff",
                        b"9" * 20,
                        b"\r\n ",
                        b"<",
                        b'"',
                    ]
                )
            )
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 10))]
        elif op == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 40))]
    return bytes(data)


@settings(max_examples=500)
@given(mutated(RESPONSE))
def test_parse_response_never_raises_on_mutations(data: bytes) -> None:
    r = parse_response(data)
    if r is not None:
        assert 100 <= r.code <= 699


@settings(max_examples=500)
@given(mutated(options()))
def test_parse_request_never_raises_on_mutations(data: bytes) -> None:
    req = parse_request(data)
    if req is not None:
        build_response(req, 200, "OK", "t")  # anything we accept we can answer


_word = st.from_regex(r"[A-Za-z0-9.\-]{1,20}", fullmatch=True)


@given(
    branch=_word.map(lambda w: "z9hG4bK" + w),
    call_id=_word,
    tag=_word,
    cseq=st.integers(0, 2**31 - 1),
    code=st.integers(100, 699),
    phrase=st.from_regex(r"[A-Za-z][A-Za-z ]{0,20}[A-Za-z]", fullmatch=True),
)
def test_build_parse_round_trip(
    branch: str, call_id: str, tag: str, cseq: int, code: int, phrase: str
) -> None:
    req = parse_request(options(branch=branch, call_id=call_id, from_tag=tag, cseq=cseq))
    assert req is not None
    assert (req.via_branch, req.call_id, req.cseq_num) == (branch, call_id, cseq)
    resp = parse_response(build_response(req, code, phrase, "tt"))
    assert resp is not None
    assert (
        resp.code,
        resp.phrase,
        resp.via_branch,
        resp.call_id,
        resp.cseq_num,
        resp.cseq_method,
    ) == (code, phrase, branch, call_id, cseq, "OPTIONS")


# --- OptionsTemplate: the prober's precomputed messages --------------------------------------

TEMPLATE_FIELDS: dict[str, object] = dict(
    request_uri="sip:192.0.2.1:5060",
    via_host="192.0.2.2",
    via_port=40000,
    from_uri="sip:trunkguard@192.0.2.2",
    to_uri="sip:192.0.2.1:5060",
    cseq=1,
    contact="sip:trunkguard@192.0.2.2:40000",
    user_agent="trunkguard/0.1",
)


def _fields(msg: bytes) -> dict[str, str]:
    lines = msg.decode().split("\r\n")
    return {line.split(":", 1)[0]: line.split(": ", 1)[1] for line in lines[1:] if line}


@pytest.mark.parametrize(
    ("via_host", "me"), [("192.0.2.2", "192.0.2.2"), ("2001:db8::2", "[2001:db8::2]")]
)
def test_template_fresh_is_build_options_with_new_ids(via_host: str, me: str) -> None:
    fields = TEMPLATE_FIELDS | {"via_host": via_host}
    template = OptionsTemplate(**fields, call_id_host=me)  # type: ignore[arg-type]
    branch, call_id, msg = template.fresh()
    tag = _fields(msg)["From"].rpartition(";tag=")[2]
    assert msg == build_options(
        **fields,
        branch=branch,
        call_id=call_id,  # type: ignore[arg-type]
        from_tag=tag,
    )
    assert re.fullmatch(r"z9hG4bK[0-9a-f]{24}", branch)  # 96 bits, like new_branch()
    assert re.fullmatch(r"[0-9a-f]{16}", tag)  # 64 bits, like new_tag()
    assert re.fullmatch(rf"[0-9a-f]{{24}}@{re.escape(me)}", call_id)  # like new_call_id()
    req = parse_request(msg)
    assert req is not None and (req.via_branch, req.call_id) == (branch, call_id)


def test_template_ids_are_fresh_and_independent() -> None:
    template = OptionsTemplate(**TEMPLATE_FIELDS, call_id_host="h")  # type: ignore[arg-type]
    seen = [template.fresh() for _ in range(2000)]
    branches = {b for b, _, _ in seen}
    call_ids = {c.partition("@")[0] for _, c, _ in seen}
    tags = {_fields(m)["From"].rpartition("=")[2] for _, _, m in seen}
    assert len(branches) == len(call_ids) == len(tags) == 2000


def test_template_render_matches_and_checks_ids() -> None:
    template = OptionsTemplate(**TEMPLATE_FIELDS)  # type: ignore[arg-type]
    assert (
        template.render(branch="z9hG4bKabc123", call_id="cid1@192.0.2.2", from_tag="ft1")
        == options()
    )
    for bad in ({"branch": "z9hG4bK\r\nX: 1"}, {"call_id": "c\n"}, {"from_tag": "t\0"}):
        ids = {"branch": "z9hG4bK1", "call_id": "c", "from_tag": "t"} | bad
        with pytest.raises(ValueError):
            template.render(**ids)


@pytest.mark.parametrize(
    "field",
    ["request_uri", "via_host", "from_uri", "to_uri", "contact", "user_agent", "call_id_host"],
)
def test_template_refuses_header_injection(field: str) -> None:
    with pytest.raises(ValueError):
        OptionsTemplate(**(TEMPLATE_FIELDS | {field: "x\r\nEvil: 1"}))  # type: ignore[arg-type]


@settings(max_examples=500)
@given(
    st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b":", b" "]), max_size=30).map(b"".join)
)
def test_head_ends_at_the_first_empty_line(data: bytes) -> None:
    assert _head(data) == re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
