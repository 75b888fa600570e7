"""Signed commands: the canonical form, and every way a command is refused (pure: the
time is passed in)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trunkguard.signing import (
    Body,
    Rejected,
    canonical,
    command_id,
    keypair,
    private_key,
    public_key,
    sign,
    verify,
)

NOW = 1_800_000_000_000
PEM, PUB = keypair()
KEY = private_key(PEM)
OTHER_PEM, OTHER_PUB = keypair()
KEYS = {"noc": public_key(PUB)}
AUD = ("site-a/sbc1", "site-a")


def body(**kw: object) -> Body:
    base: dict[str, object] = dict(
        aud="site-a/sbc1",
        id="c0ffee",
        action="failover",
        args={"group": "pstn", "path": "backup"},
        issued_at=NOW,
        expires_at=NOW + 30_000,
        key_id="noc",
        counter=7,
    )
    return Body(**{**base, **kw})  # type: ignore[arg-type]


def check(payload: bytes, now: int = NOW) -> Body:
    return verify(payload, KEYS, AUD, now, 5_000)


def reason(payload: bytes, now: int = NOW) -> str:
    with pytest.raises(Rejected) as e:
        check(payload, now)
    assert "\n" not in str(e.value)
    return e.value.reason


def test_a_genuine_command_verifies_for_its_node_and_its_site() -> None:
    b = check(sign(KEY, body()))
    assert (b.action, dict(b.args), b.counter) == (
        "failover",
        {"group": "pstn", "path": "backup"},
        7,
    )
    assert check(sign(KEY, body(aud="site-a"))).aud == "site-a"
    assert command_id(sign(KEY, body())) == "c0ffee"


def test_the_canonical_form_is_stable_and_covers_every_field() -> None:
    doc = body().doc()
    assert canonical(doc) == canonical(dict(reversed(list(doc.items()))))
    assert canonical(doc).startswith(b"trunkguard-cmd-v1\n{")
    for f in doc:
        changed = {**doc, f: "x" if not isinstance(doc[f], int) else doc[f] + 1}
        assert canonical(changed) != canonical(doc), f


def test_every_refusal_has_its_reason() -> None:
    good = json.loads(sign(KEY, body()))
    other = private_key(OTHER_PEM)
    cases = {
        b"not json": "malformed",
        json.dumps({k: v for k, v in good.items() if k != "sig"}).encode(): "unsigned",
        sign(KEY, body(key_id="mallory")): "unknown_key",
        sign(other, body()): "bad_signature",  # re-signed with another key, same key id
        sign(KEY, body(aud="site-b/sbc1")): "wrong_audience",
        sign(KEY, body(aud="site-a/sbc2")): "wrong_audience",
        sign(KEY, body(expires_at=NOW + 61_000)): "lifetime",
        sign(KEY, body(issued_at=NOW - 60_000, expires_at=NOW - 1)): "expired",
        sign(KEY, body(issued_at=NOW + 6_000, expires_at=NOW + 30_000)): "future",
        sign(KEY, body(args={"group": ["x"]})): "bad_arguments",  # type: ignore[dict-item]
        json.dumps({**good, "v": 2}).encode(): "malformed",
        json.dumps({**good, "body": {**good["body"], "extra": 1}}).encode(): "malformed",
        json.dumps({**good, "body": {**good["body"], "counter": 1.5}}).encode(): "malformed",
        json.dumps({**good, "sig": "!!"}).encode(): "bad_signature",
    }
    for payload, want in cases.items():
        assert reason(payload) == want, (payload[:80], want)
    # Within the allowed skew is fine.
    check(sign(KEY, body(issued_at=NOW + 4_000, expires_at=NOW + 30_000)))


def test_altering_any_byte_of_the_body_breaks_the_signature() -> None:
    payload = sign(KEY, body())
    doc = json.loads(payload)
    for f in ("aud", "id", "action", "key_id"):
        tampered = {**doc, "body": {**doc["body"], f: doc["body"][f] + "x"}}
        assert reason(json.dumps(tampered).encode()) in ("bad_signature", "unknown_key"), f
    tampered = {**doc, "body": {**doc["body"], "args": {"group": "pstn", "path": "primary"}}}
    assert reason(json.dumps(tampered).encode()) == "bad_signature"
    sig = bytearray(base64.b64decode(doc["sig"]))
    sig[0] ^= 1
    flipped = {**doc, "sig": base64.b64encode(bytes(sig)).decode()}
    assert reason(json.dumps(flipped).encode()) == "bad_signature"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_is_refused_never_raised(payload: bytes) -> None:
    with pytest.raises(Rejected):
        check(payload)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 600), st.integers(0, 255))
def test_flipping_any_byte_of_a_signed_command_never_passes_as_another(pos: int, bit: int) -> None:
    payload = bytearray(sign(KEY, body()))
    pos %= len(payload)
    payload[pos] ^= bit or 1
    try:
        b = check(bytes(payload))
    except Rejected:
        return
    # JSON may still decode to the very same command (e.g. a changed escape); never another.
    assert b == check(sign(KEY, body()))


def test_public_keys_from_base64_or_pem_and_bad_ones_refused() -> None:
    assert public_key(PUB) is not None
    with pytest.raises(ValueError, match="bad Ed25519 public key"):
        public_key("bm90IGEga2V5")
    with pytest.raises(ValueError):
        public_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")
