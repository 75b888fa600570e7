"""Building and parsing the few SIP messages we need (RFC 3261 section 7, 20).

The parsers face the network: they never raise and return None for anything that
is not a well-formed SIP/2.0 message. Header names are stored lowercased in their
long form ("v" -> "via"), values with folding undone, in wire order.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

MAX_MESSAGE = 65535  # nothing larger fits in a UDP datagram
_COMPACT = {
    "a": "accept-contact", "b": "referred-by", "c": "content-type", "d": "request-disposition",
    "e": "content-encoding", "f": "from", "i": "call-id", "j": "reject-contact",
    "k": "supported", "l": "content-length", "m": "contact", "n": "identity-info",
    "o": "event", "r": "refer-to", "s": "subject", "t": "to", "u": "allow-events",
    "v": "via", "x": "session-expires", "y": "identity",
}
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_STATUS = re.compile(r"SIP/2\.0 ([1-6][0-9]{2})(?: (.*))?\Z", re.IGNORECASE)
_REQUEST = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+) (\S+) SIP/2\.0\Z", re.IGNORECASE)
_CSEQ = re.compile(r"([0-9]{1,10})\s+([A-Za-z0-9\-.!%*_+`'~]+)\Z")
_BRANCH = re.compile(r";\s*branch\s*=\s*([^;,\s]+)", re.IGNORECASE)
_RETRY_AFTER = re.compile(r"([0-9]{1,10})(?![0-9])")  # delta-seconds, then comment/params
REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 200: "OK", 202: "Accepted", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 407: "Proxy Authentication "
    "Required", 408: "Request Timeout", 480: "Temporarily Unavailable", 482: "Loop Detected",
    483: "Too Many Hops", 486: "Busy Here", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out", 603: "Decline",
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


def build_options(*, request_uri: str, via_host: str, via_port: int, transport: str = "UDP",
                  branch: str, call_id: str, from_uri: str, from_tag: str, to_uri: str,
                  cseq: int, contact: str, user_agent: str, max_forwards: int = 70) -> bytes:
    """An OPTIONS request; raises ValueError if any field would break the framing."""
    if ":" in via_host and not via_host.startswith("["):
        via_host = f"[{via_host}]"
    lines = [
        f"OPTIONS {request_uri} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {via_host}:{via_port};rport;branch={branch}",
        f"Max-Forwards: {max_forwards}",
        f"From: {_angle(from_uri)};tag={from_tag}",
        f"To: {_angle(to_uri)}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} OPTIONS",
        f"Contact: {_angle(contact)}",
        "Accept: application/sdp",
        f"User-Agent: {user_agent}",
        "Content-Length: 0",
    ]
    if not request_uri or any(c.isspace() for c in request_uri):
        raise ValueError(f"bad Request-URI {request_uri!r}")
    return _join(lines)


def _join(lines: list[str]) -> bytes:
    for line in lines:
        if any(c in line for c in "\r\n\0"):
            raise ValueError(f"line break or NUL inside a header: {line[:40]!r}")
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
    return next((v for k, v in headers if k == name), None)


def _split_message(data: bytes) -> tuple[str, Headers] | None:
    """Start line and headers; None if the framing or any header line is malformed."""
    if not data or len(data) > MAX_MESSAGE:
        return None
    head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    start, *lines = re.split(r"\r?\n", text)
    if "\0" in text or any("\r" in line for line in (start, *lines)):  # NUL or a lone CR
        return None
    headers: list[list[str]] = []
    for line in lines:
        if not line:  # only possible as the last line of an unterminated head
            continue
        if line[:1] in (" ", "\t"):  # folded continuation (RFC 3261 7.3.1)
            if not headers:
                return None
            headers[-1][1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not _TOKEN.match(name):
            return None
        name = name.lower()
        headers.append([_COMPACT.get(name, name), value.strip()])
    return start, tuple((k, v) for k, v in headers)


def _split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quoted strings and <...>."""
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


def _common(headers: Headers) -> tuple[str | None, str | None, int | None, str | None]:
    """First Via's branch, Call-ID, CSeq number and method."""
    via = _first(headers, "via")
    match = _BRANCH.search(_split_commas(via)[0]) if via is not None else None
    cseq = _CSEQ.match(_first(headers, "cseq") or "")
    call_id = _first(headers, "call-id")
    return (match.group(1) if match else None, call_id or None,
            int(cseq.group(1)) if cseq else None, cseq.group(2) if cseq else None)


def parse_response(data: bytes) -> SipResponse | None:
    """Parse a SIP/2.0 response; None for anything else. Never raises."""
    split = _split_message(data)
    status = _STATUS.match(split[0]) if split else None
    if split is None or status is None:
        return None
    headers = split[1]
    branch, call_id, cseq_num, cseq_method = _common(headers)
    retry = _RETRY_AFTER.match(_first(headers, "retry-after") or "")
    return SipResponse(
        code=int(status.group(1)), phrase=(status.group(2) or "").strip(), via_branch=branch,
        call_id=call_id, cseq_num=cseq_num, cseq_method=cseq_method,
        retry_after=int(retry.group(1)) if retry else None, headers=headers,
    )


def parse_request(data: bytes) -> SipRequest | None:
    """Parse a SIP/2.0 request that carries the headers needed to answer it. Never raises."""
    split = _split_message(data)
    line = _REQUEST.match(split[0]) if split else None
    if split is None or line is None:
        return None
    headers = split[1]
    branch, call_id, cseq_num, cseq_method = _common(headers)
    if (call_id is None or cseq_num is None or cseq_method is None
            or not all(_first(headers, h) for h in ("via", "from", "to"))):
        return None
    return SipRequest(method=line.group(1), uri=line.group(2), via_branch=branch,
                      call_id=call_id, cseq_num=cseq_num, cseq_method=cseq_method, headers=headers)


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
    lines += [f"From: {request.header('from')}", f"To: {to}", f"Call-ID: {request.call_id}",
              f"CSeq: {request.cseq_num} {request.cseq_method}", "Content-Length: 0"]
    return _join(lines)
