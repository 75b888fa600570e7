"""SIP/SIPS URIs (RFC 3261 section 19.1), as far as a probe target needs them.

Parsing is strict and every rejection carries a one-line reason, because these
strings come from operators (config files, the `probe` command line).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
# paramchar: unreserved / escaped / param-unreserved ("[]/:&+$")
_PARAM_VALUE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})+\Z")
# user-unreserved adds "&=+$,;?/"; ':' separates an (obsolete) password
_USER = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/:]|%[0-9A-Fa-f]{2})+\Z")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\Z")
_DEFAULT_TRANSPORT = {"sip": "udp", "sips": "tls"}


@dataclass(frozen=True)
class SipUri:
    """A parsed URI. `host` holds IPv6 literals without brackets; hosts are lowercased."""

    scheme: str  # "sip" | "sips"
    user: str | None
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...] = ()

    def param(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.params if k == name), None)

    @property
    def transport(self) -> str:
        value = self.param("transport")
        if not value:
            return _DEFAULT_TRANSPORT[self.scheme]
        value = value.lower()
        # sips over a stream is TLS (RFC 3261 26.2.2: "sips:...;transport=tcp" means TLS)
        return "tls" if self.scheme == "sips" and value == "tcp" else value

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user is not None else ""
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)
        return f"{self.scheme}:{user}{self.hostport}{params}"


def parse_uri(text: str) -> SipUri:
    """Parse a sip:/sips: URI; raise ValueError with a one-line reason if malformed."""
    s = text.strip()
    scheme, colon, rest = s.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in _DEFAULT_TRANSPORT:
        raise ValueError("not a SIP URI: missing 'sip:' scheme")
    if "?" in rest:
        raise ValueError("URI headers ('?...') are not allowed in a probe target")
    if any(c.isspace() or not c.isprintable() for c in rest):
        raise ValueError("URI contains whitespace or control characters")
    user: str | None = None
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if not user:
            raise ValueError("empty user part before '@'")
        if not _USER.match(user):
            raise ValueError(f"bad user part '{user}'")
    hostport, *raw_params = rest.split(";")
    host, port = _parse_hostport(hostport)
    params = _parse_params(raw_params)
    uri = SipUri(scheme, user, host, port, params)
    if scheme == "sips" and uri.transport not in ("tls", "wss"):
        raise ValueError(f"sips: URI cannot use transport={uri.param('transport')}")
    return uri


def _parse_hostport(text: str) -> tuple[str, int | None]:
    if not text:
        raise ValueError("missing host")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unterminated IPv6 literal: missing ']'")
        literal, tail = text[1:end], text[end + 1 :]
        try:
            host = ipaddress.IPv6Address(literal).compressed
        except ValueError:
            raise ValueError(f"bad IPv6 address '{literal}'") from None
        if tail and not tail.startswith(":"):
            raise ValueError(f"unexpected '{tail}' after IPv6 literal")
        return host, _parse_port(tail[1:]) if tail else None
    if text.count(":") > 1:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ValueError(f"bad host:port '{text}'") from None
        raise ValueError(f"IPv6 address must be in brackets: '[{text}]'")
    name, colon, port_text = text.partition(":")
    return _parse_host(name), _parse_port(port_text) if colon else None


def _parse_host(name: str) -> str:
    if not name:
        raise ValueError("missing host")
    if all(c.isdigit() or c == "." for c in name) and name.count(".") == 3:
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise ValueError(f"bad IPv4 address '{name}'") from None
    labels = name.rstrip(".").split(".") if name != "." else [""]
    if len(name) > 253 or not all(len(lb) <= 63 and _LABEL.match(lb) for lb in labels):
        raise ValueError(f"bad host name '{name}'")
    if labels[-1][0].isdigit():  # RFC 3261 toplabel starts with a letter
        raise ValueError(f"bad host name '{name}'")
    return name.lower()


def _parse_port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 0 < int(text) <= 65535:
        raise ValueError(f"bad port '{text}'")
    return int(text)


def _parse_params(raw: list[str]) -> tuple[tuple[str, str | None], ...]:
    params: list[tuple[str, str | None]] = []
    for item in raw:
        name, eq, value = item.partition("=")
        if not _TOKEN.match(name):
            raise ValueError(f"bad URI parameter ';{item}'")
        if eq and not _PARAM_VALUE.match(value):
            raise ValueError(f"bad value in URI parameter ';{item}'")
        name = name.lower()
        if any(name == k for k, _ in params):
            raise ValueError(f"duplicate URI parameter '{name}'")
        params.append((name, value if eq else None))
    return tuple(params)
