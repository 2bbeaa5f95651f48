"""The signed preview cookie: issued by the preview link, checked on requests that carry it.

A browser cannot set a request header, so the preview link (proxy/preview_link.py) gives it a
cookie instead; a request with a valid one goes to the idle colour, exactly like one with the
preview header. The value is `<colour>.<expiry>.<signature>`:

- `colour`: the idle colour when the cookie was issued. After a switch that colour may be the
  live one; a cookie naming a colour that is not the idle colour now is ignored, so a cookie can
  never reach a colour that preview does not reach at that moment;
- `expiry`: Unix seconds; past it the cookie is ignored (the browser's Max-Age says the same,
  but a copied cookie has no browser to enforce it);
- `signature`: HMAC-SHA256 over both with the cookie key, base64url, 128 bits. Without the key a
  cookie cannot be forged or extended.

Pure: no I/O; the caller passes the time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from typing import Final

# Why a cookie was not honoured: fixed words, a metric label (bluegreen_preview_cookies_total).
VALID: Final = "valid"
MALFORMED: Final = "malformed"
FORGED: Final = "forged"
EXPIRED: Final = "expired"
WRONG_COLOUR: Final = "wrong_colour"
UNTRUSTED_PEER: Final = "untrusted_peer"
OUTCOMES: Final = (VALID, MALFORMED, FORGED, EXPIRED, WRONG_COLOUR, UNTRUSTED_PEER)

# What a request to the preview link did (bluegreen_preview_links_total): set the cookie, cleared
# it, was refused (token or network), or was not a valid link request.
LINK_ON: Final = "on"
LINK_OFF: Final = "off"
LINK_REFUSED: Final = "refused"
LINK_INVALID: Final = "invalid"
LINK_ACTIONS: Final = (LINK_ON, LINK_OFF, LINK_REFUSED, LINK_INVALID)

MIN_KEY_SIZE: Final = 32
_SIGNATURE_SIZE: Final = 16  # bytes of the HMAC kept: 128 bits, 22 base64url characters
# Used to derive the cookie key from the preview token, so that the key is not the token itself
# (a cookie's signature then says nothing about the token).
_KEY_LABEL: Final = b"bluegreen preview cookie key v1"
# With neither a token nor a key file, preview is open to anyone the trusted networks admit, and
# the cookie can grant no more than the header already does: a fixed key keeps every replica
# agreeing on cookies (a random one per process would not).
_OPEN_KEY: Final = hashlib.sha256(_KEY_LABEL + b" (open preview)").digest()


def derive_key(token: bytes | None) -> bytes:
    """The cookie key when no key file is configured: from the preview token, or the open key."""
    if token is None:
        return _OPEN_KEY
    return hmac.new(token, _KEY_LABEL, hashlib.sha256).digest()


def _signature(key: bytes, colour: bytes, expiry: bytes) -> bytes:
    digest = hmac.new(key, colour + b"." + expiry, hashlib.sha256).digest()[:_SIGNATURE_SIZE]
    return base64.urlsafe_b64encode(digest).rstrip(b"=")


def issue(key: bytes, colour: str, expires_at: float) -> bytes:
    """A cookie value granting preview of `colour` until `expires_at` (Unix seconds)."""
    colour_bytes = colour.encode("ascii")
    expiry = b"%d" % int(expires_at)
    return b"%s.%s.%s" % (colour_bytes, expiry, _signature(key, colour_bytes, expiry))


def check(key: bytes, value: bytes, idle: str | None, now: float) -> str:
    """Say whether a cookie value grants preview now: VALID, or why not (an outcome word).

    The signature is checked first and in constant time, so that a guessed value learns nothing
    from which check failed or how fast.
    """
    parts = value.strip().split(b".")
    if len(parts) != 3 or not parts[1].isdigit():
        return MALFORMED
    colour, expiry, signature = parts
    if not hmac.compare_digest(signature, _signature(key, colour, expiry)):
        return FORGED
    if int(expiry) <= now:
        return EXPIRED
    if idle is None or colour != idle.encode("ascii"):
        return WRONG_COLOUR
    return VALID


def remove_cookie(value: bytes, name: bytes) -> tuple[bytes, bytes | None]:
    """Split the cookie called `name` out of a Cookie field value.

    Returns the field value without it, the other cookies byte for byte (empty when it was the
    only one), and its value (None when absent; the last one when it appears more than once).
    """
    prefix = name + b"="
    head, found_name, tail = value.partition(prefix)
    if not found_name:
        return value, None
    # The common case, the cookie once and at the start of a piece, without splitting the whole
    # field (a few method calls instead of two per cookie); anything else takes the long way.
    before = head.rstrip(b" ")
    found, semicolon, rest = tail.partition(b";")
    if (before and before[-1] != _SEMICOLON) or rest.partition(prefix)[1]:
        return _remove_every(value, prefix)
    if not before:
        return rest.lstrip(b" "), found
    others = before[:-1] + b";" + rest if semicolon else before[:-1]
    return others.lstrip(b" "), found


_SEMICOLON: Final = 59  # b";"[0]


def _remove_every(value: bytes, prefix: bytes) -> tuple[bytes, bytes | None]:
    """`remove_cookie` piece by piece: every occurrence, whatever surrounds it."""
    found: bytes | None = None
    kept: list[bytes] = []
    for piece in value.split(b";"):
        if piece.lstrip().startswith(prefix):
            found = piece.lstrip()[len(prefix) :]
        else:
            kept.append(piece)
    if found is None:
        return value, None
    return b";".join(kept).lstrip(b" "), found


def forwarded_https(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Say whether the last X-Forwarded-Proto value among `headers` is https.

    Only meaningful for a request from a trusted balancer: a cookie set for it gets `Secure`.
    """
    proto = b""
    for name, value in headers:
        if name.lower() == b"x-forwarded-proto":
            proto = value
    return proto.rpartition(b",")[2].strip().lower() == b"https"
