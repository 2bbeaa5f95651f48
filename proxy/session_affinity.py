"""Sessions that survive a switch: the session cookie and the drain window of the old colour.

A single-page application loaded from blue asks for blue's hashed assets and API routes; right
after a switch to green those would fail. With `session.affinity: cookie`, every live response
carries a cookie naming the colour that answered. For `session.drainTimeout` after a switch, a
request whose cookie names the colour that was active before the switch keeps going to it;
requests without one go to the new colour at once. The window closes early when that colour is
rolled back from, turns unhealthy or leaves the config, and a rollback opens none: everyone
moves back at once (the controller decides the window, `drain_after`, and publishes it in the
routing table).

The cookie is `<colour>.<expiry>.<signature>`, signed like the preview cookie
(proxy/preview_cookie.py) with a key of its own, and it names a version, not a person: every
client answered by blue within the same few seconds gets the same value. So the values in use
are few, and each is checked once and then remembered: the signature costs one HMAC per value,
not one per request.

Pure: no I/O; callers pass the time (Unix seconds).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from proxy.preview_cookie import VALID, check, issue

NONE: Final = "none"
COOKIE: Final = "cookie"
AFFINITY_MODES: Final = (NONE, COOKIE)
DEFAULT_SESSION_COOKIE: Final = "bluegreen_session"

# What a request's session cookie did: fixed words, a metric label
# (bluegreen_session_cookie_requests_total{colour, outcome}).
KEPT: Final = "kept"  # sent to the colour being drained, by a valid cookie for it
CURRENT: Final = "current"  # named the active colour, which it went to anyway
MOVED: Final = "moved"  # named another colour, not (or no longer) drained: went to the active
INVALID: Final = "invalid"  # malformed, or forged or expired where it was checked
SESSION_OUTCOMES: Final = (KEPT, CURRENT, MOVED, INVALID)

# Domain separation: the session key is never the preview cookie's key, so that neither cookie
# can be replayed as the other, even when both come from the same Secret.
_KEY_LABEL: Final = b"bluegreen session cookie key v1"
# One Set-Cookie value is reused for this long (at most a tenth of the cookie's life), so that
# issuing costs one HMAC per colour every few seconds rather than one per response.
_REUSE_SECONDS: Final = 5.0
# Valid values remembered (all clients share a few values, see above); past it, forgotten.
_KNOWN_KEPT: Final = 256


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """The `session.*` keys: whether sessions stay on their colour after a switch, and how."""

    affinity: str = NONE  # NONE or COOKIE
    cookie: str = DEFAULT_SESSION_COOKIE
    drain_timeout: float = 300.0  # seconds after a switch that the old colour keeps sessions
    # session.cookieKeyFile: key material from a mounted Secret; None: the preview cookie's key
    # material (preview.cookieKeyFile, else derived from the preview token).
    cookie_key_from_file: bytes | None = None
    enabled: bool = field(init=False, repr=False, compare=False)
    cookie_bytes: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "enabled", self.affinity == COOKIE)
        object.__setattr__(self, "cookie_bytes", self.cookie.encode("ascii"))

    def key(self, preview_key: bytes) -> bytes:
        """The HMAC key of the session cookie, from its own file or the preview cookie's key."""
        material = self.cookie_key_from_file
        return hmac.new(
            material if material is not None else preview_key, _KEY_LABEL, hashlib.sha256
        ).digest()


@dataclass(frozen=True, slots=True)
class DrainWindow:
    """After a switch: sessions on `colour` (active before it) may stay until `until`."""

    colour: str
    until: float  # Unix seconds


def drain_after(
    policy: SessionPolicy,
    previous_active: str | None,
    previous_window: DrainWindow | None,
    active: str,
    colours: Sequence[str],
    *,
    manual: bool,
    old_unhealthy: bool,
    now: float,
) -> DrainWindow | None:
    """The drain window of a table about to be published; None: no session is kept anywhere.

    A switch a person made opens one for the colour it leaves, unless that colour is unhealthy
    or gone from the config. Any other change of the active colour (a rollback, a refused
    switch, a replica's own hold) opens none: everyone moves at once. A config that keeps the
    active colour keeps the window while it lasts and its colour is still configured.
    """
    if not policy.enabled or previous_active is None:
        return None
    if previous_active != active:
        if not manual or old_unhealthy or previous_active not in colours:
            return None
        return DrainWindow(previous_active, now + policy.drain_timeout)
    window = previous_window
    if window is None or window.colour not in colours or window.colour == active:
        return None
    return window if now < window.until else None


def cookie_colour(value: bytes) -> tuple[bytes, int] | None:
    """The colour and expiry a session cookie claims, unverified; None when malformed."""
    colour, dot, rest = value.partition(b".")
    expiry, dot2, signature = rest.partition(b".")
    if not dot or not dot2 or not signature or not expiry.isdigit():
        return None
    return colour, int(expiry)


class SessionCookies:
    """One table's session cookie: decides where a live request goes and what cookie it gets.

    Made by the routing table when `session.affinity` is `cookie`; mutable only in its caches
    (the Set-Cookie values in use, and the values already verified), which a table swap drops.
    """

    __slots__ = (
        "active",
        "attributes",
        "drain_colour",
        "drain_until",
        "key",
        "known",
        "lines",
        "name",
        "refresh_before",
        "ttl",
    )

    def __init__(
        self, policy: SessionPolicy, key: bytes, active: str, drain: DrainWindow | None
    ) -> None:
        self.key = key
        self.name = policy.cookie_bytes
        self.ttl = policy.drain_timeout
        # A response renews the cookie when less than half its life is left: a busy session
        # gets one Set-Cookie per half drainTimeout, not one per response.
        self.refresh_before = policy.drain_timeout / 2
        self.attributes = b"; Path=/; Max-Age=%d; HttpOnly; SameSite=Lax" % int(self.ttl)
        self.active = active.encode("ascii")
        self.drain_colour = drain.colour.encode("ascii") if drain is not None else b""
        self.drain_until = drain.until if drain is not None else 0.0
        self.lines: dict[tuple[str, bool], tuple[bytes, float]] = {}
        # Cookie values seen valid (or issued here): value -> (colour, expiry).
        self.known: dict[bytes, tuple[bytes, float]] = {}

    def decide(self, value: bytes | None, now: float) -> tuple[bool, str | None, bool]:
        """For a live request with session cookie `value` (None: none): where and what next.

        Returns (keep: send it to the colour being drained; the outcome word, None without a
        cookie; whether the response must set a fresh cookie).
        """
        if value is None:
            return False, None, True
        known = self.known.get(value)
        if known is None:
            known = self._learn(value, now)
            if known is None:
                return False, INVALID, True
        colour, expiry = known
        if expiry <= now:
            return False, INVALID, True
        stale = expiry - now < self.refresh_before
        if colour == self.active:
            return False, CURRENT, stale
        if colour == self.drain_colour and now < self.drain_until:
            return True, KEPT, stale
        return False, MOVED, True

    def set_cookie(self, colour: str, now: float, secure: bool) -> bytes:
        """The `Set-Cookie` field line naming `colour`, shared for a few seconds by everyone."""
        cached = self.lines.get((colour, secure))
        if cached is not None and now < cached[1]:
            return cached[0]
        expiry = int(now + self.ttl)
        value = issue(self.key, colour, expiry)
        if len(self.known) >= _KNOWN_KEPT:
            self.known.clear()
        self.known[value] = (colour.encode("ascii"), float(expiry))
        line = b"Set-Cookie: %s=%s%s%s\r\n" % (
            self.name,
            value,
            self.attributes,
            b"; Secure" if secure else b"",
        )
        self.lines[(colour, secure)] = (line, now + min(_REUSE_SECONDS, self.ttl / 10))
        return line

    def _learn(self, value: bytes, now: float) -> tuple[bytes, float] | None:
        """Check a cookie value not seen before: its (colour, expiry) if validly signed.

        Valid values are remembered: every client answered within the same few seconds sends
        the same value, so the signature is computed about once per value, not per request.
        """
        claimed = cookie_colour(value.strip())
        if claimed is None:
            return None
        try:
            colour = claimed[0].decode("ascii")
        except UnicodeDecodeError:
            return None  # no colour name is anything but ASCII
        if check(self.key, value, colour, now) != VALID:
            return None  # forged or expired; not remembered, so a flood cannot fill the cache
        if len(self.known) >= _KNOWN_KEPT:
            self.known.clear()
        known = self.known[value] = (claimed[0], float(claimed[1]))
        return known
