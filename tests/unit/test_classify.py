from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trunkguard.core.classify import OkCodes, classify
from trunkguard.core.events import ProbeOutcome


def response(code: int, phrase: str = "", retry_after: float | None = None) -> ProbeOutcome:
    return ProbeOutcome(
        at=100.0, reason="response", code=code, phrase=phrase, rtt=0.01, retry_after=retry_after
    )


def test_default_is_2xx() -> None:
    ok = OkCodes.default()
    assert 200 in ok and 299 in ok
    assert 199 not in ok and 403 not in ok and 503 not in ok
    assert str(ok) == "2xx"


def test_parse_mixed_items() -> None:
    ok = OkCodes.parse(["2xx", "403", 404, " 5XX "])
    assert all(c in ok for c in (200, 250, 403, 404, 500, 599))
    assert all(c not in ok for c in (100, 302, 401, 405, 600))
    assert str(ok) == "2xx,5xx,403,404"


@pytest.mark.parametrize("item", ["abc", "99", "700", "2x", "xx", "20", "2000", "", "7xx", "0xx"])
def test_parse_rejects_junk_with_one_line_reason(item: str) -> None:
    with pytest.raises(ValueError) as err:
        OkCodes.parse([item])
    assert str(err.value) == f"bad status code pattern {item!r}: use e.g. 200, 403 or 2xx"


@pytest.mark.parametrize("items", [[], "2xx", [True], [99], [1000]])
def test_parse_rejects_other_junk(items: object) -> None:
    with pytest.raises(ValueError):
        OkCodes.parse(items)  # type: ignore[arg-type]


def test_contains_rejects_non_int() -> None:
    assert "200" not in OkCodes.default()


@pytest.mark.parametrize(
    ("outcome", "ok", "reason"),
    [
        (response(200, "OK"), True, "200 OK"),
        (response(503, "Service Unavailable"), False, "503 Service Unavailable"),
        (response(403, "Forbidden"), False, "403 Forbidden"),
        (ProbeOutcome(at=1, reason="timeout", detail="after 500ms"), False, "timeout after 500ms"),
        (
            ProbeOutcome(at=1, reason="refused", detail="ICMP port unreachable"),
            False,
            "ICMP port unreachable",
        ),
        (ProbeOutcome(at=1, reason="refused"), False, "ICMP port unreachable"),
        (ProbeOutcome(at=1, reason="unreachable"), False, "host unreachable"),
        (
            ProbeOutcome(at=1, reason="send_error", detail="No buffer space available"),
            False,
            "send failed: No buffer space available",
        ),
        (
            ProbeOutcome(at=1, reason="dns", detail="x.invalid: Name or service not known"),
            False,
            "dns: x.invalid: Name or service not known",
        ),
    ],
)
def test_classify_reasons(outcome: ProbeOutcome, ok: bool, reason: str) -> None:
    v = classify(outcome, target="t1", ok_codes=OkCodes.default(), retry_after_cap=300)
    assert (v.ok, v.reason, v.target, v.at) == (ok, reason, "t1", outcome.at)
    assert v.hold_until is None


def test_403_is_ok_only_when_listed() -> None:
    out = response(403, "Forbidden")
    assert not classify(out, target="t", ok_codes=OkCodes.default(), retry_after_cap=1).ok
    assert classify(out, target="t", ok_codes=OkCodes.parse(["2xx", "403"]), retry_after_cap=1).ok


def test_503_retry_after_holds_capped() -> None:
    ok = OkCodes.default()
    v = classify(
        response(503, "Service Unavailable", 30), target="t", ok_codes=ok, retry_after_cap=300
    )
    assert v.hold_until == 130.0
    v = classify(response(503, "x", 3600), target="t", ok_codes=ok, retry_after_cap=300)
    assert v.hold_until == 400.0
    assert (
        classify(response(503, "x"), target="t", ok_codes=ok, retry_after_cap=300).hold_until
        is None
    )


def test_retry_after_ignored_when_503_is_ok_or_other_code() -> None:
    v = classify(
        response(503, "x", 30), target="t", ok_codes=OkCodes.parse(["5xx"]), retry_after_cap=300
    )
    assert v.ok and v.hold_until is None
    v = classify(
        response(480, "x", 30), target="t", ok_codes=OkCodes.default(), retry_after_cap=300
    )
    assert v.hold_until is None


@given(
    st.sampled_from(["response", "timeout", "refused", "unreachable", "send_error", "dns"]),
    st.one_of(st.none(), st.integers(100, 699)),
    st.one_of(st.none(), st.floats(0, 1e6)),
    st.lists(st.one_of(st.integers(100, 699), st.sampled_from(["1xx", "2xx", "4xx"])), min_size=1),
)
def test_ok_iff_response_in_codes(
    reason: str, code: int | None, retry: float | None, items: list[str | int]
) -> None:
    codes = OkCodes.parse(items)
    out = ProbeOutcome(at=5.0, reason=reason, code=code, retry_after=retry)
    v = classify(out, target="t", ok_codes=codes, retry_after_cap=60)
    assert v.ok == (reason == "response" and code in codes)
    assert v.reason and "\n" not in v.reason
    if v.hold_until is not None:
        assert 5.0 <= v.hold_until <= 65.0
