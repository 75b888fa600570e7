"""A tiny UDP SIP responder: the simulated carrier of the demo lab and of tests."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from trunkguard.sip.message import REASON_PHRASES, build_response, new_tag, parse_request

log = logging.getLogger(__name__)


class OptionsResponder(asyncio.DatagramProtocol):
    """Answers OPTIONS with `code`; `silent` drops everything, like a dead carrier."""

    def __init__(self, code: int = 200) -> None:
        self.code = code
        self.silent = False
        self.requests = 0  # OPTIONS seen, answered or not
        self._tag = new_tag()
        self._transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def start(cls, host: str, port: int, code: int = 200) -> OptionsResponder:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(lambda: cls(code), local_addr=(host, port))
        return proto

    @property
    def port(self) -> int:
        if self._transport is None:
            raise RuntimeError("responder is not started")
        return int(self._transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a datagram endpoint always gets a datagram transport (3.11 lacks the subclass)
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        request = parse_request(data)
        if request is None or request.method == "ACK":  # garbage, responses; ACK gets no answer
            return
        if request.method == "OPTIONS":
            self.requests += 1
        if self.silent or self._transport is None:
            return
        code = self.code if request.method == "OPTIONS" else 501
        try:
            reply = build_response(request, code, REASON_PHRASES.get(code, "Unknown"), self._tag)
        except ValueError as exc:  # a request we cannot echo safely; a carrier would drop it
            log.debug("not answering %s: %s", addr, exc)
            return
        self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("responder socket error: %s", exc)  # ICMP from a vanished prober: harmless

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
