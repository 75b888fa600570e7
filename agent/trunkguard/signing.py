"""Signed commands: the canonical form, Ed25519 signatures, and the checks an agent makes.

A command travels as {"v": 1, "body": {...}, "sig": base64}. The signature covers a
canonical encoding of the whole body (a domain prefix, then JSON with sorted keys and
no spaces): audience ("site/node", or "site" for every node of a site), a random
command id, action and arguments, issued_at and expires_at (ms since the epoch, at most
60 s apart), the key id and a per-key counter. Everything an agent acts on is in the
signed body: signature and key id travel in the payload, never in MQTT 5 user
properties, which a 3.1.1 bridge would drop.

verify() is pure (time passed in): it checks shape, key, signature, audience, time
window, lifetime; the caller owns what must be remembered (replayed ids, counters).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DOMAIN = b"trunkguard-cmd-v1\n"
VERSION = 1
MAX_LIFETIME_MS = 60_000
FIELDS = ("aud", "id", "action", "args", "issued_at", "expires_at", "key_id", "counter")
MAX_ID = 64
MAX_ARGS = 8


class Right(StrEnum):
    """What a key may do; each action needs one."""

    READ = "read"  # status, rebirth
    MAINTENANCE = "maintenance"  # a target in or out of maintenance
    ROUTING = "routing"  # failover, failback, release of a takeover
    EVACUATION = "evacuation"  # evacuate the site, or end it
    DRILL = "drill"  # run a drill (routing moves and comes back, labelled drill)


class Rejected(Exception):
    """A command refused; `reason` is a stable word (metrics, results), the text says why."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Body:
    aud: str
    id: str
    action: str
    args: Mapping[str, str | bool]
    issued_at: int  # ms since the epoch
    expires_at: int
    key_id: str
    counter: int

    def doc(self) -> dict[str, Any]:
        return {f: (dict(self.args) if f == "args" else getattr(self, f)) for f in FIELDS}


def canonical(body: Mapping[str, Any]) -> bytes:
    return (
        DOMAIN
        + json.dumps(
            {f: body[f] for f in FIELDS}, sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode()
    )


def new_id() -> str:
    return secrets.token_hex(16)


def sign(key: Ed25519PrivateKey, body: Body) -> bytes:
    doc = body.doc()
    sig = key.sign(canonical(doc))
    return json.dumps(
        {"v": VERSION, "body": doc, "sig": base64.b64encode(sig).decode()},
        separators=(",", ":"),
    ).encode()


def public_key(text: str) -> Ed25519PublicKey:
    """A public key from base64 of its 32 raw bytes (what keygen writes), or PEM."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 public key")
            return key
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error) as e:
        raise ValueError(f"bad Ed25519 public key: {e}") from None


def private_key(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def keypair() -> tuple[bytes, str]:
    """A new key: its private PEM (PKCS#8) and its public key as base64."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pem, base64.b64encode(raw).decode()


def command_id(payload: bytes) -> str | None:
    """The command id of a payload, if it has a usable one (to answer even a refusal)."""
    try:
        doc = json.loads(payload)
        cid = doc["body"]["id"]
    except (ValueError, TypeError, KeyError):
        return None
    return cid if isinstance(cid, str) and 0 < len(cid) <= MAX_ID and cid.isprintable() else None


def _body(doc: object) -> Body:
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise Rejected("malformed", f"not a version {VERSION} signed command")
    b = doc.get("body")
    if not isinstance(b, dict) or set(b) != set(FIELDS):
        raise Rejected("malformed", f"body must have exactly {', '.join(FIELDS)}")
    strings = ("aud", "id", "action", "key_id")
    if not all(isinstance(b[f], str) and 0 < len(b[f]) <= 128 for f in strings):
        raise Rejected("malformed", "aud, id, action and key_id must be short text")
    if len(b["id"]) > MAX_ID:
        raise Rejected("malformed", f"id longer than {MAX_ID}")
    ints = ("issued_at", "expires_at", "counter")
    if not all(type(b[f]) is int and 0 <= b[f] < 1 << 63 for f in ints):
        raise Rejected("malformed", "issued_at, expires_at and counter must be integers")
    args = b["args"]
    if not isinstance(args, dict) or len(args) > MAX_ARGS:
        raise Rejected("malformed", f"args must be an object of at most {MAX_ARGS} entries")
    for k, v in args.items():
        if not (isinstance(v, bool) or (isinstance(v, str) and len(v) <= 256)):
            raise Rejected("bad_arguments", f"argument {str(k)[:32]!r} must be text or a bool")
    return Body(**b)


def verify(
    payload: bytes,
    keys: Mapping[str, Ed25519PublicKey],
    audiences: tuple[str, ...],
    now_ms: int,
    skew_ms: int,
) -> Body:
    """The command's body if it is genuine, meant for us and in its time; Rejected else."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise Rejected("malformed", "not JSON") from None
    if isinstance(doc, dict) and "sig" not in doc:
        raise Rejected("unsigned", "no signature")
    body = _body(doc)
    sig_text = doc["sig"]
    key = keys.get(body.key_id)
    if key is None:
        raise Rejected("unknown_key", f"unknown key {body.key_id[:64]!r}")
    try:
        sig = base64.b64decode(sig_text, validate=True) if isinstance(sig_text, str) else b""
        key.verify(sig, canonical(doc["body"]))
    except (InvalidSignature, ValueError, binascii.Error):
        raise Rejected(
            "bad_signature", f"signature does not verify for key {body.key_id}"
        ) from None
    if body.aud not in audiences:
        raise Rejected("wrong_audience", f"meant for {body.aud}, this is {audiences[0]}")
    if body.expires_at - body.issued_at > MAX_LIFETIME_MS or body.expires_at < body.issued_at:
        raise Rejected("lifetime", "expires_at must be within 60 s after issued_at")
    if now_ms > body.expires_at:
        raise Rejected("expired", f"expired {(now_ms - body.expires_at) / 1000:.1f}s ago")
    if body.issued_at > now_ms + skew_ms:
        raise Rejected("future", f"issued {(body.issued_at - now_ms) / 1000:.1f}s in the future")
    return body
