"""Every config key, once: its name, kind of value, default, where it goes in `Config`, and why.

This table is the single truth about the keys. controller/config.py parses by it, unknown-key
messages list it, and tests/test_config_keys.py checks docs/configuration.md against it and that
each default below parses to the default of the section type it fills. Adding a key is one row
here, one field on the section type named by `target` (a new section is also one field of
`Config`), and one row in docs/configuration.md.

Defaults are written as a user would write them (`5m`, `64Ki`), so the table reads like the docs.
Pure data: no I/O, no parsing at import beyond what the rows name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from controller.values import (
    AFFINITY,
    BOOLEAN,
    COLOUR,
    COOKIE_NAME,
    COUNT,
    DEFAULT_PREVIEW_HEADER,
    DURATION,
    FRACTION,
    HEADER,
    HEADER_NAMES,
    IDLE_REPLICAS,
    KEY_FILE,
    LINK_PATH,
    LOG_FORMAT,
    METHODS,
    NETWORKS,
    OPTIONAL_DURATION,
    PATH,
    PERCENT,
    POSITIVE,
    SECRET,
    SECRET_FILE,
    SIZE,
    STATUS_FLOOR,
    TEXT,
    URL,
    WORKLOAD,
    ValueKind,
)

UPSTREAM_PREFIX = "upstream."
# `scale.<colour>` shares its prefix with the scale.* settings; colours are lower-case, the
# settings are not all, and a setting's name always wins.
SCALE_WORKLOAD_KEY = "scale.<colour>"


@dataclass(frozen=True, slots=True)
class Key:
    """One config key and everything known about it."""

    name: str
    kind: ValueKind[Any]
    # As written in a config; None: required, or derived from other keys (see the docs).
    default: str | None
    # `section.field` of Config (Config.pool.max_idle is "pool.max_idle"), or a field of Config
    # itself ("active").
    target: str
    doc: str  # one line: what the key means

    @property
    def section(self) -> str:
        """The Config field holding this key's section, or "" for a field of Config itself."""
        return self.target.rpartition(".")[0]

    @property
    def field(self) -> str:
        """The field of the section (or of Config) that this key sets."""
        return self.target.rpartition(".")[2]


# In the order of the docs; unknown-key messages list the names in this order.
KEYS: tuple[Key, ...] = (
    Key("active", COLOUR, None, "active", "the colour that receives live traffic"),
    Key("upstream.<colour>", URL, None, "upstreams", "http://host[:port] of a colour; two or more"),
    Key(
        "revision",
        TEXT,
        "",
        "revision",
        "free text, e.g. the release; a new value ends a rollback's hold",
    ),
    Key(
        "preview.header",
        HEADER,
        DEFAULT_PREVIEW_HEADER,
        "preview.header",
        "requests with it go to the preview colour",
    ),
    Key("preview.token", SECRET, "", "preview.token", "when set, the header must carry it"),
    Key(
        "preview.tokenFile",
        SECRET_FILE,
        "",
        "preview.token_from_file",
        "the token read from this file (a mounted Secret) instead of preview.token",
    ),
    Key(
        "preview.trustedCIDRs",
        NETWORKS,
        "",
        "preview.trusted_networks",
        "comma-separated networks allowed to use preview (empty: anyone)",
    ),
    Key(
        "preview.colour",
        COLOUR,
        None,
        "preview_colour",
        "where preview goes; unset: the other of exactly two colours",
    ),
    Key(
        "preview.path",
        LINK_PATH,
        "/.well-known/bluegreen/preview",
        "preview.path",
        "the preview link: ?token=T&next=/p sets the preview cookie, /off clears it",
    ),
    Key(
        "preview.cookie",
        COOKIE_NAME,
        "bluegreen_preview",
        "preview.cookie",
        "the cookie the link sets; a request with a valid one goes to the preview colour",
    ),
    Key("preview.cookieTTL", DURATION, "8h", "preview.cookie_ttl", "how long the cookie is valid"),
    Key(
        "preview.cookieKeyFile",
        KEY_FILE,
        "",
        "preview.cookie_key_from_file",
        "the cookie's HMAC key (32+ bytes, a mounted Secret); empty: from the token",
    ),
    Key(
        "session.affinity",
        AFFINITY,
        "none",
        "session.affinity",
        "cookie: after a switch, sessions on the old colour stay there for a while",
    ),
    Key(
        "session.cookie",
        COOKIE_NAME,
        "bluegreen_session",
        "session.cookie",
        "the cookie naming the colour that answered (session.affinity: cookie)",
    ),
    Key(
        "session.drainTimeout",
        DURATION,
        "5m",
        "session.drain_timeout",
        "how long after a switch sessions may stay on the old colour (the cookie's life)",
    ),
    Key(
        "session.cookieKeyFile",
        KEY_FILE,
        "",
        "session.cookie_key_from_file",
        "the session cookie's key material (32+ bytes); empty: the preview cookie's",
    ),
    Key(
        "forwarded.trustedCIDRs",
        NETWORKS,
        "",
        "forwarded_trusted",
        "peers (a load balancer) whose forwarded fields are kept; others' are replaced",
    ),
    Key(
        "headers.allowUnderscores",
        BOOLEAN,
        "false",
        "edge.allow_underscores",
        "pass request fields with _ in their name on (dropped by default)",
    ),
    Key(
        "listen.proxyProtocol",
        BOOLEAN,
        "false",
        "edge.proxy_protocol",
        "trusted peers (forwarded.trustedCIDRs) send a PROXY protocol v1/v2 header first",
    ),
    Key("health.path", PATH, "/healthz", "health.path", "probed on every colour"),
    Key("health.interval", DURATION, "2s", "health.interval", "between probes"),
    Key("health.timeout", DURATION, "1s", "health.timeout", "per probe; at most health.interval"),
    Key(
        "health.failureThreshold",
        POSITIVE,
        "3",
        "health.failure_threshold",
        "consecutive failures before a colour is unhealthy",
    ),
    Key(
        "health.successThreshold",
        POSITIVE,
        "2",
        "health.success_threshold",
        "consecutive successes before it is healthy again",
    ),
    Key("rollback.enabled", BOOLEAN, "true", "rollback.enabled", "preflight and watch switches"),
    Key("rollback.window", DURATION, "5m", "rollback.window", "how long a switch is watched"),
    Key(
        "rollback.maxErrorRate",
        FRACTION,
        "0.05",
        "rollback.max_error_rate",
        "5xx and connection failures over live requests that trigger a rollback",
    ),
    Key(
        "rollback.minRequests",
        POSITIVE,
        "20",
        "rollback.min_requests",
        "no error-rate decision on fewer live requests",
    ),
    Key(
        "shadow.percent",
        PERCENT,
        "0",
        "shadow.percent",
        "share of live requests mirrored to the idle colour and compared (0: off)",
    ),
    Key(
        "shadow.methods",
        METHODS,
        "GET,HEAD",
        "shadow.methods",
        "methods that may be mirrored; anything else never is",
    ),
    Key(
        "shadow.maxBodySize",
        SIZE,
        "64Ki",
        "shadow.max_body_size",
        "larger request bodies are not mirrored; response bodies compared up to it",
    ),
    Key(
        "shadow.maxInflight",
        POSITIVE,
        "100",
        "shadow.max_inflight",
        "shadows in flight at once; past it new ones are dropped and counted",
    ),
    Key(
        "shadow.compareBody",
        BOOLEAN,
        "false",
        "shadow.compare_body",
        "also compare a SHA-256 of both bodies (up to shadow.maxBodySize)",
    ),
    Key(
        "shadow.timeout", DURATION, "5s", "shadow.timeout", "a shadow's whole exchange; else error"
    ),
    Key(
        "shadow.maxMismatchRate",
        FRACTION,
        "0.05",
        "shadow.max_mismatch_rate",
        "a switch to a colour whose mismatch-or-error rate is above it is refused",
    ),
    Key(
        "shadow.minRequests",
        POSITIVE,
        "100",
        "shadow.min_requests",
        "comparisons needed before the gate can refuse a switch",
    ),
    Key("shadow.window", DURATION, "10m", "shadow.window", "the comparisons the gate looks at"),
    Key(
        "drain.timeout",
        DURATION,
        "30s",
        "timeouts.drain",
        "how long upgraded and streaming connections on the old colour may live",
    ),
    Key("timeout.connect", DURATION, "5s", "timeouts.connect", "to open an upstream connection"),
    Key("timeout.read", DURATION, "60s", "timeouts.read", "longest wait for upstream bytes"),
    Key("pool.maxIdle", COUNT, "64", "pool.max_idle", "idle keep-alive connections per colour"),
    Key(
        "pool.maxInflight",
        COUNT,
        "10000",
        "pool.max_inflight",
        "concurrent requests per colour; past it a fast 503 (0: no limit)",
    ),
    Key("pool.idleTimeout", DURATION, "4s", "pool.idle_timeout", "an idle upstream conn closes"),
    Key(
        "limits.requestHeadSize",
        SIZE,
        "64Ki",
        "limits.max_head_size",
        "request line and fields; past it 431",
    ),
    Key("limits.uriSize", SIZE, "8Ki", "limits.max_uri_size", "request target; past it 414"),
    Key(
        "limits.headerCount",
        POSITIVE,
        "100",
        "limits.max_header_count",
        "fields per request; past it 431",
    ),
    Key(
        "limits.bodySize",
        SIZE,
        "100Mi",
        "limits.max_body_size",
        "request body, counted as it streams; past it 413 (0: none)",
    ),
    Key(
        "limits.connections",
        COUNT,
        "10000",
        "limits.max_connections",
        "client connections; past it 503 with Retry-After (0: none)",
    ),
    Key(
        "timeout.requestHead",
        DURATION,
        "30s",
        "limits.head_timeout",
        "the whole request head must arrive within it; else 408",
    ),
    Key(
        "timeout.keepAlive",
        DURATION,
        "60s",
        "limits.keepalive_timeout",
        "an idle client keep-alive connection is closed after it",
    ),
    Key(
        "retry.maxRetries",
        COUNT,
        "2",
        "retry.max_retries",
        "new attempts after a failure that left a request unanswered (0: never)",
    ),
    Key(
        "retry.timeout",
        DURATION,
        "10s",
        "retry.timeout",
        "no new attempt starts later than this after the request head",
    ),
    Key(
        "accessLog.format",
        LOG_FORMAT,
        "off",
        "access_log.format",
        "one stdout line per request: off, json, or clf (combined log format plus colour)",
    ),
    Key(
        "accessLog.minStatus",
        STATUS_FLOOR,
        "0",
        "access_log.min_status",
        "log only responses with at least this status (or slower than minDuration)",
    ),
    Key(
        "accessLog.minDuration",
        OPTIONAL_DURATION,
        "0",
        "access_log.min_duration",
        "log only requests at least this slow (or with minStatus)",
    ),
    Key(
        "accessLog.headers",
        HEADER_NAMES,
        "",
        "access_log.headers",
        "request fields to log, comma-separated (never credentials or the preview header)",
    ),
    Key(
        "accessLog.dropQuery",
        BOOLEAN,
        "false",
        "access_log.drop_query",
        "log the target without its query string",
    ),
    Key(
        "accessLog.bufferSize",
        POSITIVE,
        "10000",
        "access_log.buffer_size",
        "lines waiting for stdout; past it new lines are dropped and counted",
    ),
    Key(
        SCALE_WORKLOAD_KEY,
        WORKLOAD,
        None,
        "scale.workloads",
        "deployment/NAME behind a colour's Service, scaled down while the colour is idle",
    ),
    Key(
        "scale.idleReplicas",
        IDLE_REPLICAS,
        "off",
        "scale.idle_replicas",
        "replicas an idle colour keeps once a switch has held (off: never scale)",
    ),
    Key(
        "scale.after",
        DURATION,
        None,
        "scale.after",
        "how long a switch must hold before the old colour is scaled down",
    ),
    Key(
        "scale.timeout",
        DURATION,
        "5m",
        "scale.timeout",
        "longest wait for a scaled-down colour to be ready before a switch to it",
    ),
    Key(
        "tracing.generate",
        BOOLEAN,
        "false",
        "tracing.generate",
        "start a W3C trace (traceparent) for a request that has none",
    ),
)

KNOWN_KEYS: tuple[str, ...] = tuple(key.name for key in KEYS)
BY_NAME: Mapping[str, Key] = MappingProxyType({key.name: key for key in KEYS})
