"""Just enough of WebSocket framing (RFC 6455) to end a tunnel politely.

A WebSocket tunnel is forwarded as raw bytes. To close one with a proper Close frame (code 1001,
"going away") after a switch or on shutdown, the proxy must know where frames begin: a Close
frame injected in the middle of a frame would corrupt the stream. `FrameTracker` follows frame
boundaries in one direction by reading only frame headers; payloads are skipped, never copied.
"""

from __future__ import annotations

import os
import re
import struct

GOING_AWAY = 1001
_CLOSE = 0x88  # FIN and opcode 8 (Close)
_MASKED = 0x80
_WEBSOCKET_UPGRADE = re.compile(rb"(?im)^upgrade:[ \t]*websocket[ \t]*\r?$")


def is_websocket_request(head: bytes) -> bool:
    """Say whether a request head asks to upgrade to WebSocket."""
    return _WEBSOCKET_UPGRADE.search(head) is not None


class FrameTracker:
    """Follows WebSocket frame boundaries in one direction of a tunnel."""

    __slots__ = ("header", "remaining")

    def __init__(self) -> None:
        self.header = b""  # the bytes of a frame header read so far, when it spans reads
        self.remaining = 0  # payload bytes of the current frame still to come

    @property
    def at_boundary(self) -> bool:
        """Say whether the bytes seen so far end exactly at the end of a frame."""
        return not self.header and not self.remaining

    def feed(self, data: bytes) -> None:
        """Advance over `data`, the next bytes of the stream in this direction."""
        offset = 0
        size = len(data)
        while offset < size:
            if self.remaining:
                step = min(self.remaining, size - offset)
                self.remaining -= step
                offset += step
                continue
            header = self.header + data[offset : offset + 14]
            length = _header_length(header)
            if length is None or len(header) < length:
                # The header continues in a later read.
                self.header = header
                return
            offset += length - len(self.header)
            self.header = b""
            self.remaining = _payload_length(header)


def _header_length(header: bytes) -> int | None:
    """Return the length of the frame header at the start of `header`, or None if unknown yet."""
    if len(header) < 2:
        return None
    short = header[1] & 0x7F
    extended = 2 if short == 126 else 8 if short == 127 else 0
    mask = 4 if header[1] & _MASKED else 0
    return 2 + extended + mask


def _payload_length(header: bytes) -> int:
    short = header[1] & 0x7F
    if short == 126:
        return int(struct.unpack_from("!H", header, 2)[0])
    if short == 127:
        return int(struct.unpack_from("!Q", header, 2)[0])
    return short


def close_frame(code: int, reason: str, *, masked: bool) -> bytes:
    """Build a Close frame; frames from a client (to the upstream) must be masked."""
    payload = struct.pack("!H", code) + reason.encode("utf-8")[:123]
    if not masked:
        return bytes((_CLOSE, len(payload))) + payload
    mask = os.urandom(4)
    body = bytes([byte ^ mask[i % 4] for i, byte in enumerate(payload)])
    return bytes((_CLOSE, _MASKED | len(payload))) + mask + body
