"""Flat config keys -> validated `Config` -> `RoutingTable`, with errors that say how to fix them.

Pure code: nothing here reads files or talks to Kubernetes. The same keys come from a ConfigMap's
`data` (strings only) or from a local YAML file (which may give ints, floats and bools; they are
normalised to text first, so both sources behave the same).

Keys, with their defaults (durations take a unit: `500ms`, `2s`, `5m`, `1h`, or `1m30s`):

    active                    required   the colour that receives live traffic
    upstream.<colour>         required   http://host[:port] of each colour's Service; two or more
    preview.header            X-Bluegreen-Preview   requests with it go to the preview colour
    preview.token             (empty)    when set, the header's value must equal it
    preview.trustedCIDRs      (empty)    comma-separated networks allowed to use preview
    preview.colour            (see below) the colour preview traffic goes to
    forwarded.trustedCIDRs    (empty)    peers whose X-Forwarded-For is kept (a load balancer
                                         in front); from anyone else it is replaced by the peer
    health.path               /healthz   probed on every colour
    health.interval           2s         between probes; health.timeout must be shorter
    health.timeout            1s
    health.failureThreshold   3          consecutive failures before a colour is unhealthy
    health.successThreshold   2          consecutive successes before it is healthy again
    rollback.enabled          true       true/false, yes/no or 1/0
    rollback.window           5m         how long after a switch the new colour is watched
    rollback.maxErrorRate     0.05       in (0, 1]: 5xx and connection failures over live requests
    rollback.minRequests      20         no rollback decision on fewer requests
    drain.timeout             30s        how long upgraded connections on the old colour may live
    timeout.connect           5s         to open a connection to an upstream
    timeout.read              60s        longest wait for upstream bytes
    pool.maxIdle              64         idle keep-alive connections kept per colour (0: none)
    pool.maxInflight          10000      concurrent requests per colour; past it a fast 503
                                         with Retry-After, instead of a queue (0: no limit)
    pool.idleTimeout          4s         an idle keep-alive connection is closed after this
    retry.maxRetries          2          new attempts after a failure that left a request
                                         unanswered (0: never)
    retry.timeout             10s        no new attempt starts later than this after the head
    limits.requestHeadSize    64Ki       request line and fields; past it 431 (sizes: bytes,
                                         or Ki/Mi/Gi, k/M/G)
    limits.uriSize            8Ki        request target; past it 414
    limits.headerCount        100        fields per request; past it 431
    limits.bodySize           100Mi      request body, counted as it streams; past it 413 (0: none)
    limits.connections        10000      client connections; past it 503 + Retry-After (0: none)
    timeout.requestHead       30s        the whole request head must arrive within it; else 408
    timeout.keepAlive         60s        an idle client keep-alive connection is closed after it

`preview.colour` is optional. Without it, with exactly two colours the preview colour is the one
that is not active; with three or more, preview is off. Preview is also off while
`preview.colour` names the active colour, so a switch never makes a config invalid.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from proxy.routing import (
    ClientLimits,
    IPNetwork,
    PoolSettings,
    PreviewPolicy,
    ProxyTimeouts,
    RetryPolicy,
    RoutingTable,
    Upstream,
)

_T = TypeVar("_T")

UPSTREAM_PREFIX = "upstream."
DEFAULT_PREVIEW_HEADER = "X-Bluegreen-Preview"

_DURATION_HINT = "use a number with a unit such as 500ms, 2s or 5m"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)")
_DURATION_WHOLE = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

KIB = 1024
MIB = 1024 * KIB
_SIZE = re.compile(r"(\d+)(Ki|Mi|Gi|k|M|G)?")
_SIZE_UNITS = {"": 1, "Ki": KIB, "Mi": MIB, "Gi": 1024 * MIB, "k": 1000, "M": 10**6, "G": 10**9}
_SIZE_HINT = "use a whole number of bytes or one with a unit such as 8Ki, 64Ki, 100Mi or 1Gi"

_COLOUR = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_COLOUR_HINT = (
    "use lower-case letters, digits and '-', starting and ending with a letter or digit, "
    "at most 63 characters (e.g. blue)"
)
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?")
_URL_HINT = "use http://host[:port], e.g. http://myapp-blue.default.svc:80"
# RFC 9110 5.6.2: the characters of a field name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A preview header is removed before forwarding, so it must not be a field the proxy or the
# upstream needs: connection-level fields (a superset of proxy.headers.HOP_BY_HOP), framing,
# the fields the proxy writes itself, and credentials that the application must still receive.
_RESERVED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "expect",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-bluegreen-colour",
        "authorization",
        "cookie",
    }
)
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})

KNOWN_KEYS: tuple[str, ...] = (
    "active",
    "upstream.<colour>",
    "preview.header",
    "preview.token",
    "preview.trustedCIDRs",
    "preview.colour",
    "forwarded.trustedCIDRs",
    "health.path",
    "health.interval",
    "health.timeout",
    "health.failureThreshold",
    "health.successThreshold",
    "rollback.enabled",
    "rollback.window",
    "rollback.maxErrorRate",
    "rollback.minRequests",
    "drain.timeout",
    "timeout.connect",
    "timeout.read",
    "pool.maxIdle",
    "pool.maxInflight",
    "pool.idleTimeout",
    "limits.requestHeadSize",
    "limits.uriSize",
    "limits.headerCount",
    "limits.bodySize",
    "limits.connections",
    "timeout.requestHead",
    "timeout.keepAlive",
    "retry.maxRetries",
    "retry.timeout",
)
_SETTING_KEYS = frozenset(KNOWN_KEYS) - {"upstream.<colour>"}


class ConfigError(ValueError):
    """A config that is rejected as a whole; `problems` holds one message per fault found."""

    def __init__(self, *problems: str, source: str | None = None) -> None:
        if not problems:
            raise TypeError("ConfigError needs at least one problem")
        self.problems: tuple[str, ...] = problems
        self.source = source
        head = f"invalid config in {source}" if source else "invalid config"
        if len(problems) == 1:
            message = f"{head}: {problems[0]}"
        else:
            listed = "\n".join(f"  - {problem}" for problem in problems)
            message = f"{head} ({len(problems)} problems):\n{listed}"
        super().__init__(message)

    def with_source(self, source: str) -> ConfigError:
        """Return the same problems, attributed to `source` (a file name or ConfigMap)."""
        return ConfigError(*self.problems, source=source)


def parse_size(text: str) -> int:
    """Return the bytes in `text` such as `8192`, `8Ki`, `64Ki`, `100Mi` or `1Gi` (0 or more).

    Binary suffixes (Ki, Mi, Gi) and decimal ones (k, M, G) are read as Kubernetes quantities are.
    Raises ValueError with a message that starts with the quoted text and says what is accepted.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size; {_SIZE_HINT}")
    return int(match[1]) * _SIZE_UNITS[match[2] or ""]


def parse_duration(text: str) -> float:
    """Return the seconds in `text` such as `500ms`, `2s`, `5m`, `1h` or `1m30s`; always > 0.

    Raises ValueError with a message that starts with the quoted text and says what is accepted.
    """
    stripped = text.strip()
    if _DURATION_WHOLE.fullmatch(stripped) is None:
        try:
            float(stripped)
        except ValueError:
            raise ValueError(f"{text!r} is not a duration; {_DURATION_HINT}") from None
        raise ValueError(
            f"{text!r} has no unit; add one, e.g. {stripped}s or {stripped}ms ({_DURATION_HINT})"
        )
    seconds = sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(stripped)
    )
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero; {_DURATION_HINT}")
    return seconds


@dataclass(frozen=True, slots=True)
class Config:
    """One validated config. Build it with `parse_config`; durations are in seconds."""

    active: str
    upstreams: Mapping[str, str]  # colour -> URL as written, in config order
    preview_header: str = DEFAULT_PREVIEW_HEADER
    preview_token: str | None = None
    preview_trusted_cidrs: tuple[IPNetwork, ...] = ()
    preview_colour: str | None = None
    forwarded_trusted_cidrs: tuple[IPNetwork, ...] = ()
    health_path: str = "/healthz"
    health_interval: float = 2.0
    health_timeout: float = 1.0
    health_failure_threshold: int = 3
    health_success_threshold: int = 2
    rollback_enabled: bool = True
    rollback_window: float = 300.0
    rollback_max_error_rate: float = 0.05
    rollback_min_requests: int = 20
    drain_timeout: float = 30.0
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    pool_max_idle: int = 64
    pool_max_inflight: int = 10000
    pool_idle_timeout: float = 4.0
    limits: ClientLimits = field(default_factory=ClientLimits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        # A read-only copy, so that a caller's dict cannot change a published config.
        object.__setattr__(self, "upstreams", MappingProxyType(dict(self.upstreams)))

    @property
    def colours(self) -> tuple[str, ...]:
        """Every configured colour, in config order."""
        return tuple(self.upstreams)

    @property
    def idle(self) -> str | None:
        """The colour preview traffic goes to, or None when preview is off."""
        if self.preview_colour is not None:
            return None if self.preview_colour == self.active else self.preview_colour
        others = [colour for colour in self.upstreams if colour != self.active]
        return others[0] if len(self.upstreams) == 2 and len(others) == 1 else None

    def to_routing_table(self, version: str) -> RoutingTable:
        """Return the immutable routing table for this config, labelled with `version`."""
        upstreams = {}
        for colour, url in self.upstreams.items():
            host, port = _split_http_url(url)
            upstreams[colour] = Upstream(colour=colour, url=url, host=host, port=port)
        token = self.preview_token.encode("ascii") if self.preview_token is not None else None
        return RoutingTable(
            version=version,
            active=self.active,
            idle=self.idle,
            upstreams=upstreams,
            preview=PreviewPolicy(
                header=self.preview_header,
                token=token,
                trusted_networks=self.preview_trusted_cidrs,
            ),
            timeouts=ProxyTimeouts(
                connect=self.connect_timeout, read=self.read_timeout, drain=self.drain_timeout
            ),
            pool=PoolSettings(
                max_idle=self.pool_max_idle,
                idle_timeout=self.pool_idle_timeout,
                max_inflight=self.pool_max_inflight,
            ),
            forwarded_trusted=self.forwarded_trusted_cidrs,
            limits=self.limits,
            retry=self.retry,
        )


def parse_config(data: Mapping[str, object]) -> Config:
    """Validate the flat key/value mapping whole and return its `Config`.

    Every problem is collected before raising, so one ConfigError lists all of them; nothing of
    an invalid mapping is ever returned.
    """
    problems: list[str] = []
    settings: dict[str, str] = {}  # the keys whose value is usable text
    given: set[str] = set()  # every known key present, usable or not
    colours: list[str] = []
    for key, value in data.items():
        if not isinstance(key, str):
            problems.append(f"{key!r}: keys must be text, such as health.path")
            continue
        is_upstream = key.startswith(UPSTREAM_PREFIX)
        if not is_upstream and key not in _SETTING_KEYS:
            problems.append(_unknown_key(key, value))
            continue
        if is_upstream:
            colour = key.removeprefix(UPSTREAM_PREFIX)
            try:
                _check_colour(colour)
            except ValueError as error:
                problems.append(f"{key}: colour {error}")
                continue
            colours.append(colour)
        given.add(key)
        text = _as_text(key, value, problems)
        if text is not None:
            settings[key] = text

    read = _Reader(settings, problems)
    upstreams = {c: read.value(f"{UPSTREAM_PREFIX}{c}", _parse_url, "") for c in colours}
    if len(colours) < 2:
        have = ", ".join(colours) or "none"
        problems.append(
            f"upstream.<colour>: at least two colours are needed (have: {have}); "
            "add e.g. upstream.blue: http://myapp-blue:80 and upstream.green: http://myapp-green:80"
        )
    # A key given without a usable value is already reported; do not also call it missing.
    active = _check_member(
        "active", settings.get("active"), colours, problems, required="active" not in given
    )
    config = Config(
        active=active or "",
        upstreams=upstreams,
        preview_header=read.value("preview.header", _parse_header, DEFAULT_PREVIEW_HEADER),
        preview_token=read.value("preview.token", _parse_token, None),
        preview_trusted_cidrs=read.value("preview.trustedCIDRs", _parse_cidrs, ()),
        forwarded_trusted_cidrs=read.value("forwarded.trustedCIDRs", _parse_cidrs, ()),
        preview_colour=_check_member(
            "preview.colour", settings.get("preview.colour"), colours, problems, required=False
        ),
        health_path=read.value("health.path", _parse_path, "/healthz"),
        health_interval=read.value("health.interval", parse_duration, 2.0),
        health_timeout=read.value("health.timeout", parse_duration, 1.0),
        health_failure_threshold=read.value("health.failureThreshold", _parse_positive_int, 3),
        health_success_threshold=read.value("health.successThreshold", _parse_positive_int, 2),
        rollback_enabled=read.value("rollback.enabled", _parse_bool, True),
        rollback_window=read.value("rollback.window", parse_duration, 300.0),
        rollback_max_error_rate=read.value("rollback.maxErrorRate", _parse_rate, 0.05),
        rollback_min_requests=read.value("rollback.minRequests", _parse_positive_int, 20),
        drain_timeout=read.value("drain.timeout", parse_duration, 30.0),
        connect_timeout=read.value("timeout.connect", parse_duration, 5.0),
        read_timeout=read.value("timeout.read", parse_duration, 60.0),
        pool_max_idle=read.value("pool.maxIdle", _parse_count, 64),
        pool_max_inflight=read.value("pool.maxInflight", _parse_count, 10000),
        pool_idle_timeout=read.value("pool.idleTimeout", parse_duration, 4.0),
        limits=ClientLimits(
            max_head_size=read.value("limits.requestHeadSize", parse_size, 64 * KIB),
            max_uri_size=read.value("limits.uriSize", parse_size, 8 * KIB),
            max_header_count=read.value("limits.headerCount", _parse_positive_int, 100),
            max_body_size=read.value("limits.bodySize", parse_size, 100 * MIB),
            max_connections=read.value("limits.connections", _parse_count, 10000),
            head_timeout=read.value("timeout.requestHead", parse_duration, 30.0),
            keepalive_timeout=read.value("timeout.keepAlive", parse_duration, 60.0),
        ),
        retry=RetryPolicy(
            max_retries=read.value("retry.maxRetries", _parse_count, 2),
            timeout=read.value("retry.timeout", parse_duration, 10.0),
        ),
    )
    if (
        not read.failed & {"health.timeout", "health.interval"}
        and config.health_timeout >= config.health_interval
    ):
        problems.append(
            f"health.timeout: {_seconds(config.health_timeout)} must be shorter than "
            f"health.interval ({_seconds(config.health_interval)}); lower the timeout or "
            "raise the interval"
        )
    for key, size in (
        ("limits.requestHeadSize", config.limits.max_head_size),
        ("limits.uriSize", config.limits.max_uri_size),
    ):
        if key not in read.failed and size < 256:
            problems.append(f"{key}: {size} bytes is too small for any request; use e.g. 8Ki")
    if problems:
        raise ConfigError(*problems)
    return config


def config_from_document(doc: object) -> Mapping[str, object]:
    """Return the flat keys of a parsed YAML document: the mapping itself or a ConfigMap's `data`.

    Anything else (a list, a scalar, another kind of manifest, a ConfigMap without `data`)
    raises ConfigError saying which shape is expected.
    """
    expected = (
        "expected flat keys (active: blue, upstream.blue: http://...) "
        "or a ConfigMap manifest with them under data:"
    )
    if doc is None:
        raise ConfigError(f"the document is empty; {expected}")
    if not isinstance(doc, Mapping):
        raise ConfigError(f"the document is a {_yaml_kind(doc)}; {expected}")
    if "kind" not in doc and "apiVersion" not in doc:
        return doc
    kind = doc.get("kind")
    if kind != "ConfigMap":
        what = f"a {kind!r} manifest" if kind else "a manifest without kind:"
        raise ConfigError(f"the document is {what}; {expected}")
    data = doc.get("data")
    if data is None:
        raise ConfigError(f"the ConfigMap has no data:; {expected}")
    if not isinstance(data, Mapping):
        raise ConfigError(f"the ConfigMap's data: is a {_yaml_kind(data)}; {expected}")
    return data


_ACTIVE_LINE = re.compile(
    r"""(?P<head>(?P<indent>[ ]*)(?:active|"active"|'active')[ \t]*:)"""
    r"""(?P<space>[ \t]*)(?P<value>"[^"\r\n]*"|'[^'\r\n]*'|[^\s#][^#\r\n]*?)?"""
    r"""(?P<tail>[ \t]*(?:\#[^\r\n]*)?\r?\n?)"""
)
_DATA_LINE = re.compile(r"""(?:data|"data"|'data')[ \t]*:[ \t]*(?:\#[^\r\n]*)?\r?\n?""")


def with_active(text: str, colour: str) -> str:
    """Return YAML `text` with its `active:` value set to `colour`, all else byte for byte.

    The line rewritten is the top-level `active:` of a flat file, or else the `active:` directly
    under a ConfigMap manifest's top-level `data:`. Quoting and trailing comments are kept.
    Raises ConfigError when `colour` is not a colour name or there is not exactly one such line.
    """
    try:
        _check_colour(colour)
    except ValueError as error:
        raise ConfigError(f"active: {error}") from None
    lines = text.splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if _active_match(line, "")]
    if not found:
        found = _active_lines_under_data(lines)
    if len(found) != 1:
        why = "no" if not found else f"{len(found)}"
        raise ConfigError(
            f"active: found {why} 'active:' lines at the top level or directly under data:; "
            "write exactly one line such as 'active: blue'"
        )
    index = found[0]
    match = _active_match(lines[index], None)
    assert match is not None  # found above
    value = match["value"] or ""
    quote = value[0] if value[:1] in {'"', "'"} else ""
    space = match["space"] or " "
    lines[index] = f"{match['head']}{space}{quote}{colour}{quote}{match['tail']}"
    return "".join(lines)


def _active_match(line: str, indent: str | None) -> re.Match[str] | None:
    match = _ACTIVE_LINE.fullmatch(line)
    if match is None or (indent is not None and match["indent"] != indent):
        return None
    return match


def _active_lines_under_data(lines: list[str]) -> list[int]:
    found: list[int] = []
    inside = False
    child_indent: str | None = None
    for i, line in enumerate(lines):
        content = line.strip()
        if not content or content.startswith("#"):
            continue
        indent = line[: len(line) - len(line.lstrip(" "))]
        if not indent:
            inside = _DATA_LINE.fullmatch(line) is not None
            child_indent = None
            continue
        if not inside:
            continue
        if child_indent is None:
            child_indent = indent  # the first key under data: sets the indentation of the rest
        if _active_match(line, child_indent):
            found.append(i)
    return found


class _Reader:
    """Parses settings one by one, collecting problems instead of stopping at the first."""

    def __init__(self, values: dict[str, str], problems: list[str]) -> None:
        self.values = values
        self.problems = problems
        self.failed: set[str] = set()

    def value(self, key: str, parse: Callable[[str], _T], default: _T) -> _T:
        text = self.values.get(key)
        if text is None:
            return default
        try:
            return parse(text)
        except ValueError as error:
            self.problems.append(f"{key}: {error}")
            self.failed.add(key)
            return default


def _as_text(key: str, value: object, problems: list[str]) -> str | None:
    # A ConfigMap only holds strings; a YAML file may hold numbers and booleans, which are
    # accepted and read as their text so that both sources mean the same thing.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if value is None:
        problems.append(f"{key}: has no value; give one, or remove the key to use the default")
    elif isinstance(value, Mapping):
        problems.append(_nested_problem(key, value))
    elif isinstance(value, list | tuple):
        hint = (
            "join the networks with commas in one string, e.g. '10.0.0.0/8, fd00::/8'"
            if key.endswith(".trustedCIDRs")
            else "give a single text value"
        )
        problems.append(f"{key}: is a list; {hint}")
    else:
        problems.append(
            f"{key}: {value!r} is a {_yaml_kind(value)}, not text or a number; quote it"
        )
    return None


def _unknown_key(key: str, value: object) -> str:
    if isinstance(value, Mapping):
        return _nested_problem(key, value)
    candidates = sorted(_SETTING_KEYS)
    if "." in key:
        # Lets a misspelt prefix (upstrem.blue) suggest the real key for that colour.
        candidates.append(UPSTREAM_PREFIX + key.split(".", 1)[1])
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    suggestion = f"did you mean {close[0]}? " if close else ""
    return f"{key}: unknown key; {suggestion}known keys: {', '.join(KNOWN_KEYS)}"


def _nested_problem(key: str, value: Mapping[object, object]) -> str:
    example = next((f"'{key}.{inner}: {v}'" for inner, v in value.items()), f"'{key}.<name>: ...'")
    return f"{key}: is a nested mapping; write flat keys instead, such as {example}"


def _yaml_kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _check_colour(colour: str) -> None:
    if len(colour) > 63 or _COLOUR.fullmatch(colour) is None:
        hint = f"; did you mean {colour.lower()!r}?" if _COLOUR.fullmatch(colour.lower()) else ""
        raise ValueError(f"{colour!r} is not a valid colour name; {_COLOUR_HINT}{hint}")


def _check_member(
    key: str, text: str | None, colours: list[str], problems: list[str], *, required: bool
) -> str | None:
    known = ", ".join(colours) or "none yet"
    if text is None:
        if required:
            problems.append(f"{key}: is required; set it to one of the colours ({known})")
        return None
    colour = text.strip()
    if colour not in colours:
        problems.append(f"{key}: {text!r} is not one of the colours; known colours: {known}")
        return None
    return colour


def _parse_url(text: str) -> str:
    _split_http_url(text)
    return text.strip()


def _split_http_url(text: str) -> tuple[str, int]:
    """Return (host, port) of `http://host[:port][/]`; the host of an IPv6 URL has no brackets."""
    url = text.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{text!r} has no http:// scheme; {_URL_HINT}")
    if scheme.lower() == "https":
        raise ValueError(
            f"{text!r}: TLS to upstreams is not supported yet; use the Service's plain "
            f"http:// port ({_URL_HINT})"
        )
    if scheme.lower() != "http":
        raise ValueError(f"{text!r} has scheme {scheme!r}; {_URL_HINT}")
    authority = rest.removesuffix("/")
    if "@" in authority:
        raise ValueError(
            f"{text!r} has user info (user@); credentials are not supported; {_URL_HINT}"
        )
    if any(c in authority for c in "/?#"):
        raise ValueError(
            f"{text!r} has a path, query or fragment; give only the base, the request's own "
            f"path is forwarded as is ({_URL_HINT})"
        )
    port_text: str | None
    if authority.startswith("["):
        host, bracket, after = authority[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"{text!r} has a malformed [IPv6] address; {_URL_HINT}")
        port_text = after[1:] if after else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r} has an invalid IPv6 address {host!r}") from None
    else:
        host, colon, after = authority.partition(":")
        port_text = after if colon else None
        _check_host(text, host)
    return host, _parse_port(text, port_text)


def _check_host(text: str, host: str) -> None:
    labels = host.removesuffix(".").split(".")
    if not host or len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{text!r} has an invalid host name {host!r}; {_URL_HINT}")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{text!r} has an invalid IPv4 address {host!r}") from None


def _parse_port(text: str, port_text: str | None) -> int:
    if port_text is None:
        return 80
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} has port {port_text!r}; use a number from 1 to 65535")
    return int(port_text)


def _parse_header(text: str) -> str:
    name = text.strip()
    if _TOKEN.fullmatch(name) is None:
        raise ValueError(
            f"{text!r} is not a valid header name; use letters, digits and '-', "
            f"e.g. {DEFAULT_PREVIEW_HEADER}"
        )
    lower = name.lower()
    if lower in _RESERVED_HEADERS or lower.startswith("proxy-"):
        raise ValueError(
            f"{text!r} is reserved (the proxy or the application needs it, and the preview "
            f"header is removed before forwarding); choose another, e.g. {DEFAULT_PREVIEW_HEADER}"
        )
    return name


def _parse_token(text: str) -> str | None:
    if text == "":
        return None
    for position, char in enumerate(text):
        if not "!" <= char <= "~":
            what = "a space" if char == " " else f"character U+{ord(char):04X}"
            # The value is a secret, so the message points at the fault without quoting it.
            raise ValueError(
                f"the value (not shown) has {what} at position {position}; use printable ASCII "
                "without spaces"
            )
    return text


def _parse_cidrs(text: str) -> tuple[IPNetwork, ...]:
    if not text.strip():
        return ()
    networks: list[IPNetwork] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ValueError(f"{text!r} has an empty entry; separate networks with single commas")
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
            continue
        except ValueError:
            pass
        try:
            loose = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(
                f"{item!r} is not an IP network; use CIDR notation such as 10.0.0.0/8 or fd00::/8"
            ) from None
        address = ipaddress.ip_interface(item).ip
        raise ValueError(
            f"{item!r} has host bits set; did you mean {loose}? "
            f"(for the single address use {address}/{loose.max_prefixlen})"
        )
    return tuple(networks)


def _parse_path(text: str) -> str:
    if not text.startswith("/") or not all("!" <= c <= "~" for c in text):
        raise ValueError(
            f"{text!r} is not a request path; it must start with '/' and have no spaces, "
            "e.g. /healthz"
        )
    return text


def _parse_positive_int(text: str) -> int:
    number = text.strip()
    if not number.isdigit() or int(number) < 1:
        raise ValueError(f"{text!r} is not a whole number of at least 1, e.g. 3")
    return int(number)


def _parse_count(text: str) -> int:
    number = text.strip()
    if not number.isdigit():
        raise ValueError(f"{text!r} is not a whole number of 0 or more, e.g. 64")
    return int(number)


def _parse_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not 0 < rate <= 1:  # also false for NaN
        hint = f"; did you mean {rate / 100:g} ({rate:g}%)?" if 1 < rate <= 100 else ""
        raise ValueError(f"{text!r} is not a fraction in (0, 1]; use e.g. 0.05 for 5%{hint}")
    return rate


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean; use true or false")


def _seconds(value: float) -> str:
    return f"{value:g}s"
