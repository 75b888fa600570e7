"""Building and parsing the few SIP messages we need (RFC 3261 section 7, 20).

The parsers face the network: they never raise and return None for anything that
is not a well-formed SIP/2.0 message. Header names are stored lowercased in their
long form ("v" -> "via"), values with folding undone, in wire order.
"""

from __future__ import annotations

import os
import re
import secrets
import string
from dataclasses import dataclass

MAX_MESSAGE = 65535  # nothing larger fits in a UDP datagram
_COMPACT = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}
_TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"  # RFC 3261 token
_STATUS = re.compile(r"SIP/2\.0 ([1-6][0-9]{2})(?: (.*))?\Z", re.IGNORECASE)
_REQUEST = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+) (\S+) SIP/2\.0\Z", re.IGNORECASE)
_CSEQ = re.compile(r"([0-9]{1,10})\s+([A-Za-z0-9\-.!%*_+`'~]+)\Z")
_BRANCH = re.compile(r";\s*branch\s*=\s*([^;,\s]+)", re.IGNORECASE)
_RETRY_AFTER = re.compile(r"([0-9]{1,10})(?![0-9])")  # delta-seconds, then comment/params
REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    202: "Accepted",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    480: "Temporarily Unavailable",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    603: "Decline",
}
Headers = tuple[tuple[str, str], ...]


def new_branch() -> str:
    """An RFC 3261 magic-cookie branch; 96 random bits so responses cannot be guessed."""
    return "z9hG4bK" + secrets.token_hex(12)


def new_tag() -> str:
    return secrets.token_hex(8)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(12)}@{host}"


def _angle(uri: str) -> str:
    return uri if uri.startswith("<") else f"<{uri}>"


def build_options(
    *,
    request_uri: str,
    via_host: str,
    via_port: int,
    transport: str = "UDP",
    branch: str,
    call_id: str,
    from_uri: str,
    from_tag: str,
    to_uri: str,
    cseq: int,
    contact: str,
    user_agent: str,
    max_forwards: int = 70,
) -> bytes:
    """An OPTIONS request; raises ValueError if any field would break the framing."""
    template = OptionsTemplate(
        request_uri=request_uri,
        via_host=via_host,
        via_port=via_port,
        transport=transport,
        from_uri=from_uri,
        to_uri=to_uri,
        cseq=cseq,
        contact=contact,
        user_agent=user_agent,
        max_forwards=max_forwards,
    )
    return template.render(branch=branch, call_id=call_id, from_tag=from_tag)


class OptionsTemplate:
    """The fixed part of an OPTIONS request, formatted and checked once.

    Only the three per-transaction values differ between two probes of the same
    destination: the Via branch, the From tag and the Call-ID. render() fills in given
    ones (checked); fresh() draws new random ones (one call to the CSPRNG) for the hot
    path. The bytes are exactly what build_options produces for the same fields.
    """

    __slots__ = ("_after_branch", "_after_tag", "_head", "_tail", "_tail_at", "call_id_host")

    def __init__(
        self,
        *,
        request_uri: str,
        via_host: str,
        via_port: int,
        transport: str = "UDP",
        from_uri: str,
        to_uri: str,
        cseq: int,
        contact: str,
        user_agent: str,
        max_forwards: int = 70,
        call_id_host: str = "",
    ) -> None:
        if ":" in via_host and not via_host.startswith("["):
            via_host = f"[{via_host}]"
        head = (
            f"OPTIONS {request_uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport.upper()} {via_host}:{via_port};rport;branch="
        )
        after_branch = f"\r\nMax-Forwards: {max_forwards}\r\nFrom: {_angle(from_uri)};tag="
        after_tag = f"\r\nTo: {_angle(to_uri)}\r\nCall-ID: "
        tail = (
            f"\r\nCSeq: {cseq} OPTIONS\r\nContact: {_angle(contact)}\r\n"
            f"Accept: application/sdp\r\nUser-Agent: {user_agent}\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        if not request_uri or any(c.isspace() for c in request_uri):
            raise ValueError(f"bad Request-URI {request_uri!r}")
        _check_lines([transport, via_host, from_uri, to_uri, contact, user_agent, call_id_host])
        self.call_id_host = call_id_host
        self._head = head.encode()
        self._after_branch = after_branch.encode()
        self._after_tag = after_tag.encode()
        self._tail = tail.encode()
        self._tail_at = f"@{call_id_host}{tail}".encode()

    def render(self, *, branch: str, call_id: str, from_tag: str) -> bytes:
        """The request with these ids; ValueError if one would break the framing."""
        _check_lines([branch, from_tag, call_id])
        return b"".join(
            (
                self._head,
                branch.encode(),
                self._after_branch,
                from_tag.encode(),
                self._after_tag,
                call_id.encode(),
                self._tail,
            )
        )

    def fresh(self) -> tuple[str, str, bytes]:
        """(branch, Call-ID, request) with a new branch, From tag and Call-ID.

        As random as new_branch(), new_tag() and new_call_id(call_id_host) (96, 64 and
        96 bits, independent), from a single 32-byte draw.
        """
        ids = os.urandom(32).hex()  # what secrets.token_hex(32) does, minus two calls
        raw = ids.encode()
        return (
            "z9hG4bK" + ids[:24],
            f"{ids[40:]}@{self.call_id_host}",
            b"".join(
                (
                    self._head,
                    b"z9hG4bK",
                    raw[:24],
                    self._after_branch,
                    raw[24:40],
                    self._after_tag,
                    raw[40:],
                    self._tail_at,
                )
            ),
        )


_BREAKS = re.compile(r"[\r\n\0]")


def _check_lines(lines: list[str]) -> None:
    for line in lines:
        if _BREAKS.search(line):
            raise ValueError(f"line break or NUL inside a header: {line[:40]!r}")


def _join(lines: list[str]) -> bytes:
    _check_lines(lines)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass(frozen=True, slots=True)
class SipResponse:
    code: int
    phrase: str
    via_branch: str | None
    call_id: str | None
    cseq_num: int | None
    cseq_method: str | None
    retry_after: int | None
    headers: Headers

    def header(self, name: str) -> str | None:
        return _first(self.headers, name)


@dataclass(frozen=True, slots=True)
class SipRequest:
    method: str
    uri: str
    via_branch: str | None
    call_id: str
    cseq_num: int
    cseq_method: str
    headers: Headers

    def header(self, name: str) -> str | None:
        return _first(self.headers, name)


def _first(headers: Headers, name: str) -> str | None:
    name = _COMPACT.get(name.lower(), name.lower())
    for k, v in headers:
        if k == name:
            return v
    return None


_LONE_CR = re.compile(r"\r(?!\n)")


def _head(data: bytes) -> bytes:
    """data up to the first empty line, i.e. the first match of CR? LF CR? LF."""
    lf_lf, lf_crlf = data.find(b"\n\n"), data.find(b"\n\r\n")
    if lf_lf < 0 and lf_crlf < 0:
        return data
    lf = lf_lf if lf_crlf < 0 or 0 <= lf_lf < lf_crlf else lf_crlf
    return data[: lf - 1] if lf and data[lf - 1] == 0x0D else data[:lf]


def _split_message(data: bytes) -> tuple[str, Headers] | None:
    """Start line and headers; None if the framing or any header line is malformed."""
    if not data or len(data) > MAX_MESSAGE:
        return None
    try:
        text = _head(data).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\0" in text:
        return None
    if "\r" in text:
        if _LONE_CR.search(text):  # a CR not followed by LF
            return None
        text = text.replace("\r\n", "\n")
    start, *lines = text.split("\n")
    headers: list[tuple[str, str]] = []
    compact = _COMPACT
    for line in lines:
        if not line:  # only possible as the last line of an unterminated head
            continue
        if line[0] in " \t":  # folded continuation (RFC 3261 7.3.1)
            if not headers:
                return None
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not name or name.strip(_TOKEN_CHARS):  # not all token characters
            return None
        name = name.lower()
        headers.append((compact.get(name, name), value.strip()))
    return start, tuple(headers)


def _split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quoted strings and <...>."""
    if "," not in value:
        return [value.strip()]
    parts: list[str] = []
    buf: list[str] = []
    quoted = angle = escaped = False
    for c in value:
        if escaped:
            escaped = False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif not quoted and c in "<>":
            angle = c == "<"
        elif c == "," and not quoted and not angle:
            parts.append("".join(buf).strip())
            buf = []
            continue
        buf.append(c)
    parts.append("".join(buf).strip())
    return parts


def _common(first: dict[str, str]) -> tuple[str | None, str | None, int | None, str | None]:
    """First Via's branch, Call-ID, CSeq number and method, from the first of each header."""
    via = first.get("via")
    match = _BRANCH.search(_split_commas(via)[0]) if via is not None else None
    cseq = _CSEQ.match(first.get("cseq") or "")
    call_id = first.get("call-id")
    return (
        match.group(1) if match else None,
        call_id or None,
        int(cseq.group(1)) if cseq else None,
        cseq.group(2) if cseq else None,
    )


def _firsts(headers: Headers) -> dict[str, str]:
    """Each header name's first value (later duplicates lose)."""
    return dict(reversed(headers))


def parse_response(data: bytes) -> SipResponse | None:
    """Parse a SIP/2.0 response; None for anything else. Never raises."""
    split = _split_message(data)
    status = _STATUS.match(split[0]) if split else None
    if split is None or status is None:
        return None
    headers = split[1]
    first = _firsts(headers)
    branch, call_id, cseq_num, cseq_method = _common(first)
    retry = _RETRY_AFTER.match(first.get("retry-after") or "")
    return SipResponse(
        code=int(status.group(1)),
        phrase=(status.group(2) or "").strip(),
        via_branch=branch,
        call_id=call_id,
        cseq_num=cseq_num,
        cseq_method=cseq_method,
        retry_after=int(retry.group(1)) if retry else None,
        headers=headers,
    )


def parse_request(data: bytes) -> SipRequest | None:
    """Parse a SIP/2.0 request that carries the headers needed to answer it. Never raises."""
    split = _split_message(data)
    line = _REQUEST.match(split[0]) if split else None
    if split is None or line is None:
        return None
    headers = split[1]
    first = _firsts(headers)
    branch, call_id, cseq_num, cseq_method = _common(first)
    if (
        call_id is None
        or cseq_num is None
        or cseq_method is None
        or not (first.get("via") and first.get("from") and first.get("to"))
    ):
        return None
    return SipRequest(
        method=line.group(1),
        uri=line.group(2),
        via_branch=branch,
        call_id=call_id,
        cseq_num=cseq_num,
        cseq_method=cseq_method,
        headers=headers,
    )


def _has_tag(name_addr: str) -> bool:
    # header params follow the '>' of a name-addr, or the first ';' of a bare addr-spec
    tail = name_addr.rpartition(">")[2] if ">" in name_addr else name_addr.partition(";")[2]
    return any(p.split("=", 1)[0].strip().lower() == "tag" for p in tail.split(";"))


def build_response(request: SipRequest, code: int, phrase: str, to_tag: str) -> bytes:
    """A response copying Via(s), From, To (adding our tag), Call-ID and CSeq."""
    if not 100 <= code <= 699:
        raise ValueError(f"status code {code} out of range 100-699")
    to = request.header("to") or ""
    if code > 100 and not _has_tag(to):  # 100 Trying carries no To tag (RFC 3261 8.2.6.1)
        to = f"{to};tag={to_tag}"
    lines = [f"SIP/2.0 {code} {phrase}"]
    lines += [f"Via: {v}" for k, v in request.headers if k == "via"]
    lines += [
        f"From: {request.header('from')}",
        f"To: {to}",
        f"Call-ID: {request.call_id}",
        f"CSeq: {request.cseq_num} {request.cseq_method}",
        "Content-Length: 0",
    ]
    return _join(lines)
