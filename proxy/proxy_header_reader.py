"""The first protocol of a connection while `listen.proxyProtocol` is on: the PROXY header.

An L4 load balancer in front (AWS NLB, HAProxy in TCP mode) puts one PROXY protocol header
before the client's bytes, naming the client. `ProxyHeaderReader` reads it from peers in
`forwarded.trustedCIDRs`, then hands the transport to the HTTP protocol with the client's
address as its peer, so that preview checks, X-Forwarded-For and logs are about the client and
not the balancer. A trusted peer that sends no valid header within `timeout.requestHead` is
closed. Anyone else is handed over at once, as plain HTTP: a PROXY header from them is never
read as one (llhttp refuses it as a request, with 400 and a close), since they could name any
address.

With the key off the server never creates this protocol: the hot path pays nothing for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from proxy.proxy_protocol import ProxyProtocolError, parse_proxy_header

log = logging.getLogger(__name__)


class ProxyHeaderReader(asyncio.Protocol):
    """Reads a PROXY protocol header from a trusted peer, then hands the connection over."""

    def __init__(
        self,
        hand_over: Callable[[str | None], asyncio.Protocol],
        trusts: Callable[[str | None], bool],
        timeout: float,
        rejected: Callable[[str], None],
    ) -> None:
        """`hand_over(client_ip)` makes the HTTP protocol (None: the connection's own peer).

        `trusts(peer_ip)` says whether a peer may send a header; `rejected(kind)` counts a
        connection closed without a valid header (`invalid`, `timeout` or `closed`).
        """
        self._hand_over = hand_over
        self._trusts = trusts
        self._timeout = timeout
        self._rejected = rejected
        self._transport: asyncio.Transport | None = None
        self._peer_ip: str | None = None
        self._buffer = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Hand an untrusted peer over at once; wait for a trusted peer's header."""
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else None
        if not self._trusts(self._peer_ip):
            self._switch(None, b"")
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(
            self._timeout, self._fail, "timeout", "no PROXY protocol header in time"
        )

    def data_received(self, data: bytes) -> None:
        """Collect the header; once it is whole, hand the connection and the rest over."""
        self._buffer += data
        try:
            header = parse_proxy_header(self._buffer)
        except ProxyProtocolError as error:
            self._fail("invalid", str(error))
            return
        if header is None:
            return  # a valid beginning; the parser bounds how long it may grow
        rest = self._buffer[header.length :] if len(self._buffer) > header.length else b""
        self._switch(header.source, rest)

    def eof_received(self) -> bool:
        """A peer that half-closes before its header is done is closed."""
        self._fail("closed", "connection closed before the PROXY protocol header ended")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop waiting for the header."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _switch(self, client_ip: str | None, rest: bytes) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        assert transport is not None
        protocol = self._hand_over(client_ip)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if rest and not transport.is_closing():
            protocol.data_received(rest)

    def _fail(self, kind: str, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._rejected(kind)
        log.info("closing connection peer=%s reason=%r", self._peer_ip, reason)
        if self._transport is not None:
            self._transport.abort()
