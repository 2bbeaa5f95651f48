"""Pure tests of controller.config: tables of inputs and the expected result or message."""

from __future__ import annotations

import ipaddress
import operator
from typing import Any

import pytest
import yaml

from controller.config import Config, ConfigError, config_from_document, parse_config
from controller.config_keys import KNOWN_KEYS
from controller.health_state import ProbeSettings
from controller.rollback import Policy
from controller.values import parse_duration
from controller.yaml_edit import with_active
from proxy.headers import HOP_BY_HOP
from proxy.routing import LIVE, PREVIEW, PoolSettings, PreviewPolicy, ProxyTimeouts

BASE: dict[str, object] = {
    "active": "blue",
    "upstream.blue": "http://myapp-blue.default.svc:80",
    "upstream.green": "http://myapp-green.default.svc:8080/",
}


def problems_of(data: dict[str, object]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.problems


def only_problem(changes: dict[str, object]) -> str:
    problems = problems_of({**BASE, **changes})
    assert len(problems) == 1, problems
    return problems[0]


# --- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h1m1s1ms", 3661.001),
        ("1.5s", 1.5),
        (".25s", 0.25),
        (" 2s ", 2.0),
        ("1ms", 0.001),
    ],
)
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2 sec", "'2 sec' is not a duration; use a number with a unit such as 500ms, 2s or 5m"),
        ("2", "'2' has no unit; add one, e.g. 2s or 2ms"),
        ("1.5", "'1.5' has no unit; add one, e.g. 1.5s or 1.5ms"),
        ("", "'' is not a duration"),
        ("s", "'s' is not a duration"),
        ("2S", "'2S' is not a duration"),
        ("-1s", "'-1s' is not a duration"),
        ("1d", "'1d' is not a duration"),
        ("2s 3m", "'2s 3m' is not a duration"),
        ("0s", "'0s' must be longer than zero"),
        ("0ms0s", "'0ms0s' must be longer than zero"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert str(caught.value).startswith(message)


# --- defaults and accepted values --------------------------------------------------------------


def test_defaults_follow_the_product_table() -> None:
    config = parse_config(BASE)
    assert config == Config(
        active="blue",
        upstreams={
            "blue": "http://myapp-blue.default.svc:80",
            "green": "http://myapp-green.default.svc:8080/",
        },
        preview=PreviewPolicy(header="X-Bluegreen-Preview", token=None, trusted_networks=()),
        preview_colour=None,
        health=ProbeSettings(
            path="/healthz",
            interval=2.0,
            timeout=1.0,
            failure_threshold=3,
            success_threshold=2,
        ),
        rollback=Policy(enabled=True, window=300.0, max_error_rate=0.05, min_requests=20),
        timeouts=ProxyTimeouts(drain=30.0, connect=5.0, read=60.0),
        pool=PoolSettings(max_idle=64, idle_timeout=4.0),
    )
    assert config.colours == ("blue", "green")
    assert config.idle == "green"


@pytest.mark.parametrize(
    ("key", "value", "attribute", "expected"),
    [
        ("active", "green", "active", "green"),
        ("active", " green ", "active", "green"),
        ("preview.header", "X-Canary", "preview.header", "X-Canary"),
        ("preview.header", "x-test_1", "preview.header", "x-test_1"),
        ("preview.token", "s3cr3t!~", "preview.token", b"s3cr3t!~"),
        ("preview.token", "", "preview.token", None),
        ("preview.token", 12345, "preview.token", b"12345"),
        ("preview.trustedCIDRs", "", "preview.trusted_networks", ()),
        (
            "preview.trustedCIDRs",
            "10.0.0.0/8, 192.168.1.7 ,fd00::/8",
            "preview.trusted_networks",
            (
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("192.168.1.7/32"),
                ipaddress.ip_network("fd00::/8"),
            ),
        ),
        ("preview.colour", "green", "preview_colour", "green"),
        ("health.path", "/ready?full=1", "health.path", "/ready?full=1"),
        ("health.interval", "10s", "health.interval", 10.0),
        ("health.timeout", "250ms", "health.timeout", 0.25),
        ("health.failureThreshold", "1", "health.failure_threshold", 1),
        ("health.successThreshold", 5, "health.success_threshold", 5),
        ("rollback.enabled", "false", "rollback.enabled", False),
        ("rollback.enabled", "No", "rollback.enabled", False),
        ("rollback.enabled", "0", "rollback.enabled", False),
        ("rollback.enabled", "YES", "rollback.enabled", True),
        ("rollback.enabled", "1", "rollback.enabled", True),
        ("rollback.enabled", False, "rollback.enabled", False),
        ("rollback.enabled", True, "rollback.enabled", True),
        ("rollback.window", "1m30s", "rollback.window", 90.0),
        ("rollback.maxErrorRate", "1", "rollback.max_error_rate", 1.0),
        ("rollback.maxErrorRate", 0.2, "rollback.max_error_rate", 0.2),
        ("rollback.maxErrorRate", "1e-3", "rollback.max_error_rate", 0.001),
        ("rollback.minRequests", "1", "rollback.min_requests", 1),
        ("drain.timeout", "500ms", "timeouts.drain", 0.5),
        ("timeout.connect", "1s", "timeouts.connect", 1.0),
        ("timeout.read", "2m", "timeouts.read", 120.0),
        ("pool.maxIdle", "0", "pool.max_idle", 0),
        ("pool.maxIdle", 8, "pool.max_idle", 8),
        ("pool.idleTimeout", "30s", "pool.idle_timeout", 30.0),
        ("accessLog.format", "JSON", "access_log.format", "json"),
        ("accessLog.format", "clf", "access_log.format", "clf"),
        ("accessLog.minStatus", "500", "access_log.min_status", 500),
        ("accessLog.minStatus", 0, "access_log.min_status", 0),
        ("accessLog.minDuration", "1s", "access_log.min_duration", 1.0),
        ("accessLog.minDuration", "0", "access_log.min_duration", 0.0),
        (
            "accessLog.headers",
            "X-Tenant, accept-language",
            "access_log.headers",
            ("x-tenant", "accept-language"),
        ),
        ("accessLog.headers", "", "access_log.headers", ()),
        ("accessLog.dropQuery", "true", "access_log.drop_query", True),
        ("accessLog.bufferSize", "50000", "access_log.buffer_size", 50000),
        ("tracing.generate", "true", "tracing.generate", True),
    ],
)
def test_accepted_values(key: str, value: object, attribute: str, expected: object) -> None:
    config = parse_config({**BASE, key: value})
    assert operator.attrgetter(attribute)(config) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://myapp-blue",
        "http://myapp-blue/",
        "HTTP://myapp-blue:80",
        "http://10.0.0.1:8080",
        "http://[::1]:9000",
        "http://[fd00::1]",
        "http://myapp.ns.svc.cluster.local.:80",
        "http://a:65535",
        "http://a:1",
    ],
)
def test_upstream_urls_accepted(url: str) -> None:
    assert parse_config({**BASE, "upstream.green": url}).upstreams["green"] == url


@pytest.mark.parametrize(
    ("data", "idle"),
    [
        (BASE, "green"),
        ({**BASE, "active": "green"}, "blue"),
        ({**BASE, "preview.colour": "green"}, "green"),
        ({**BASE, "preview.colour": "blue"}, None),  # preview names the active colour: off
        ({**BASE, "upstream.red": "http://red"}, None),  # three colours, no preview.colour
        ({**BASE, "upstream.red": "http://red", "preview.colour": "red"}, "red"),
        ({**BASE, "upstream.red": "http://red", "preview.colour": "blue"}, None),
    ],
)
def test_idle_colour(data: dict[str, object], idle: str | None) -> None:
    assert parse_config(data).idle == idle


def test_upstream_order_is_kept() -> None:
    data = {"upstream.zeta": "http://z", "active": "alpha", "upstream.alpha": "http://a"}
    assert parse_config(data).colours == ("zeta", "alpha")


def test_config_upstreams_cannot_be_changed_after_parsing() -> None:
    source = {"blue": "http://b", "green": "http://g"}
    config = Config(active="blue", upstreams=source)
    source["red"] = "http://r"
    assert config.colours == ("blue", "green")
    with pytest.raises(TypeError):
        config.upstreams["red"] = "http://r"  # type: ignore[index]


# --- rejected values: one problem each, naming key, value and what is accepted -----------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "health.interval",
            "2 sec",
            "health.interval: '2 sec' is not a duration; "
            "use a number with a unit such as 500ms, 2s or 5m",
        ),
        ("health.interval", 2, "health.interval: '2' has no unit"),
        ("rollback.window", "0s", "rollback.window: '0s' must be longer than zero"),
        ("drain.timeout", "-5s", "drain.timeout: '-5s' is not a duration"),
        ("timeout.connect", "5", "timeout.connect: '5' has no unit"),
        ("timeout.read", "forever", "timeout.read: 'forever' is not a duration"),
        ("pool.idleTimeout", "0ms", "pool.idleTimeout: '0ms' must be longer than zero"),
        ("active", "red", "active: 'red' is not one of the colours; known colours: blue, green"),
        ("preview.colour", "red", "preview.colour: 'red' is not one of the colours"),
        (
            "upstream.Green",
            "http://g",
            "upstream.Green: colour 'Green' is not a valid colour name; use lower-case letters",
        ),
        ("upstream.-x", "http://g", "upstream.-x: colour '-x' is not a valid colour name"),
        ("upstream.x-", "http://g", "upstream.x-: colour 'x-' is not a valid colour name"),
        ("upstream.a_b", "http://g", "upstream.a_b: colour 'a_b' is not a valid colour name"),
        ("upstream." + "a" * 64, "http://g", "is not a valid colour name"),
        ("upstream.", "http://g", "upstream.: colour '' is not a valid colour name"),
        (
            "upstream.green",
            "https://g:443",
            "upstream.green: 'https://g:443': TLS to upstreams is not supported yet",
        ),
        ("upstream.green", "myapp-green:80", "upstream.green: 'myapp-green:80' has no http://"),
        ("upstream.green", "ftp://g", "upstream.green: 'ftp://g' has scheme 'ftp'"),
        ("upstream.green", "http://g/api", "'http://g/api' has a path, query or fragment"),
        ("upstream.green", "http://g?x=1", "'http://g?x=1' has a path, query or fragment"),
        ("upstream.green", "http://g#top", "'http://g#top' has a path, query or fragment"),
        ("upstream.green", "http://u:p@g", "'http://u:p@g' has user info"),
        ("upstream.green", "http://g:0", "'http://g:0' has port '0'; use a number from 1 to 65535"),
        ("upstream.green", "http://g:65536", "has port '65536'; use a number from 1 to 65535"),
        ("upstream.green", "http://g:", "has port ''; use a number from 1 to 65535"),
        ("upstream.green", "http://g:http", "has port 'http'"),
        ("upstream.green", "http://", "'http://' has an invalid host name ''"),
        ("upstream.green", "http://my app", "has an invalid host name 'my app'"),
        ("upstream.green", "http://-g", "has an invalid host name '-g'"),
        ("upstream.green", "http://300.1.1.1", "has an invalid IPv4 address '300.1.1.1'"),
        ("upstream.green", "http://[zz::1]", "has an invalid IPv6 address 'zz::1'"),
        ("upstream.green", "http://[::1", "has a malformed [IPv6] address"),
        ("upstream.green", "http://::1", "has an invalid host name"),
        ("preview.header", "X Preview", "preview.header: 'X Preview' is not a valid header name"),
        ("preview.header", "X-Prev:", "preview.header: 'X-Prev:' is not a valid header name"),
        ("preview.header", "", "preview.header: '' is not a valid header name"),
        ("preview.header", "Host", "preview.header: 'Host' is reserved"),
        ("preview.header", "content-length", "'content-length' is reserved"),
        ("preview.header", "Transfer-Encoding", "'Transfer-Encoding' is reserved"),
        ("preview.header", "Connection", "'Connection' is reserved"),
        ("preview.header", "Proxy-Anything", "'Proxy-Anything' is reserved"),
        ("preview.header", "X-Real-IP", "'X-Real-IP' is reserved"),
        ("preview.header", "x-client-ip", "'x-client-ip' is reserved"),
        ("preview.header", "X-Forwarded-Port", "'X-Forwarded-Port' is reserved"),
        ("preview.header", "proxy-authorization", "'proxy-authorization' is reserved"),
        ("preview.header", "X-Forwarded-For", "'X-Forwarded-For' is reserved"),
        ("preview.header", "X-Bluegreen-Colour", "'X-Bluegreen-Colour' is reserved"),
        ("preview.header", "Authorization", "'Authorization' is reserved"),
        (
            "preview.token",
            "two words",
            "preview.token: the value (not shown) has a space at position 3; "
            "use printable ASCII without spaces",
        ),
        ("preview.token", "tab\there", "has character U+0009 at position 3"),
        ("preview.token", "caf\u00e9", "has character U+00E9 at position 3"),
        (
            "preview.trustedCIDRs",
            "10.0.0.1/8",
            "preview.trustedCIDRs: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8? "
            "(for the single address use 10.0.0.1/32)",
        ),
        (
            "preview.trustedCIDRs",
            "10.0.0.0/8, fd00::1/8",
            "'fd00::1/8' has host bits set; did you mean fd00::/8? "
            "(for the single address use fd00::1/128)",
        ),
        (
            "preview.trustedCIDRs",
            "10.0.0.0/33",
            "'10.0.0.0/33' is not an IP network; use CIDR notation such as 10.0.0.0/8",
        ),
        ("preview.trustedCIDRs", "office", "'office' is not an IP network"),
        ("preview.trustedCIDRs", "10.0.0.0/8,,fd00::/8", "has an empty entry"),
        ("preview.trustedCIDRs", "10.0.0.0/8,", "has an empty entry"),
        ("health.path", "healthz", "health.path: 'healthz' is not a request path; it must start"),
        ("health.path", "/health z", "'/health z' is not a request path"),
        ("health.path", "", "health.path: '' is not a request path"),
        (
            "health.failureThreshold",
            "0",
            "health.failureThreshold: '0' is not a whole number of at least 1, e.g. 3",
        ),
        ("health.successThreshold", "1.5", "'1.5' is not a whole number of at least 1"),
        ("health.successThreshold", "-2", "'-2' is not a whole number of at least 1"),
        ("rollback.minRequests", "many", "rollback.minRequests: 'many' is not a whole number"),
        ("pool.maxIdle", "-1", "pool.maxIdle: '-1' is not a whole number of 0 or more"),
        (
            "rollback.maxErrorRate",
            "0",
            "rollback.maxErrorRate: '0' is not a fraction in (0, 1]; use e.g. 0.05 for 5%",
        ),
        ("rollback.maxErrorRate", "5", "'5' is not a fraction in (0, 1]; use e.g. 0.05 for 5%; "),
        ("rollback.maxErrorRate", "5", "did you mean 0.05 (5%)?"),
        ("rollback.maxErrorRate", "1.01", "'1.01' is not a fraction in (0, 1]"),
        ("rollback.maxErrorRate", "nan", "'nan' is not a fraction in (0, 1]"),
        ("rollback.maxErrorRate", "5%", "'5%' is not a fraction in (0, 1]"),
        (
            "rollback.enabled",
            "maybe",
            "rollback.enabled: 'maybe' is not a boolean; use true or false",
        ),
        (
            "health.timeout",
            "3s",
            "health.timeout: 3s must not be longer than health.interval (2s); lower the timeout",
        ),
        ("health.timeout", "2001ms", "must not be longer than health.interval (2s)"),
        ("active", None, "active: has no value"),
        ("health.path", ["/a", "/b"], "health.path: is a list; give a single text value"),
        (
            "preview.trustedCIDRs",
            ["10.0.0.0/8"],
            "preview.trustedCIDRs: is a list; join the networks with commas in one string",
        ),
        (
            "health",
            {"path": "/ready"},
            "health: is a nested mapping; write flat keys instead, such as 'health.path: /ready'",
        ),
        ("health.path", {"x": 1}, "health.path: is a nested mapping"),
        ("health.path", b"/x", "health.path: b'/x' is a bytes, not text or a number; quote it"),
        (
            "helth.path",
            "/x",
            "helth.path: unknown key; did you mean health.path? known keys: active, "
            "upstream.<colour>, revision, preview.header",
        ),
        ("upstrem.green", "http://g", "upstrem.green: unknown key; did you mean upstream.green?"),
        ("Active", "blue", "Active: unknown key; did you mean active?"),
        ("preview.trustedCidrs", "", "did you mean preview.trustedCIDRs?"),
        ("zzz", "1", "zzz: unknown key; known keys: active, upstream.<colour>"),
        ("accessLog.format", "yaml", "accessLog.format: 'yaml' is not an access log format"),
        ("accessLog.minStatus", "99", "accessLog.minStatus: '99' is not a status code"),
        ("accessLog.minDuration", "1", "accessLog.minDuration: '1' has no unit"),
        ("accessLog.headers", "X-A, Cookie", "accessLog.headers: Cookie carries credentials"),
        ("accessLog.headers", "authorization", "authorization carries credentials"),
        ("accessLog.headers", "X A", "accessLog.headers: 'X A' is not a header name"),
        ("accessLog.headers", "x-bluegreen-preview", "x-bluegreen-preview is the preview header"),
        ("accessLog.bufferSize", "0", "accessLog.bufferSize: '0' is not a whole number"),
    ],
)
def test_rejected_values(key: str, value: object, message: str) -> None:
    problem = only_problem({key: value})
    assert message in problem
    if key != "preview.token":
        assert problem.startswith(f"{key}:")


def test_token_is_never_shown_in_the_message() -> None:
    problem = only_problem({"preview.token": "hunter2 secret"})
    assert "hunter2" not in problem
    assert "secret" not in problem


@pytest.mark.parametrize("header", sorted(name.decode() for name in HOP_BY_HOP))
def test_every_hop_by_hop_header_of_the_proxy_is_reserved(header: str) -> None:
    assert "is reserved" in only_problem({"preview.header": header.title()})


def test_unknown_key_lists_every_known_key() -> None:
    problem = only_problem({"nonsense": "1"})
    for key in KNOWN_KEYS:
        assert key in problem


def test_keys_must_be_text() -> None:
    problems = problems_of({**BASE, 7: "x"})  # type: ignore[dict-item]
    assert problems == ("7: keys must be text, such as health.path",)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"upstream.blue": "http://b", "upstream.green": "http://g"},
            "active: is required; set it to one of the colours (blue, green)",
        ),
        (
            {"active": "blue", "upstream.blue": "http://b"},
            "upstream.<colour>: at least two colours are needed (have: blue)",
        ),
        ({"active": "blue"}, "upstream.<colour>: at least two colours are needed (have: none)"),
    ],
)
def test_structure_problems(data: dict[str, object], message: str) -> None:
    assert any(problem.startswith(message) for problem in problems_of(data)), problems_of(data)


def test_all_problems_are_collected_into_one_error() -> None:
    data: dict[str, object] = {
        "active": "red",
        "upstream.blue": "https://b",
        "upstream.green": "http://g",
        "health.interval": "2 sec",
        "preview.trustedCIDRs": "10.0.0.1/8",
        "rollback.enabled": "maybe",
        "helth.path": "/x",
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    error = caught.value
    keys = sorted(problem.split(":", 1)[0] for problem in error.problems)
    assert keys == [
        "active",
        "health.interval",
        "helth.path",
        "preview.trustedCIDRs",
        "rollback.enabled",
        "upstream.blue",
    ]
    text = str(error)
    assert text.startswith("invalid config (6 problems):\n  - ")
    for problem in error.problems:
        assert f"  - {problem}" in text
    assert isinstance(error, ValueError)


def test_timeout_interval_check_is_skipped_when_either_is_invalid() -> None:
    # Only the bad duration is reported, not a comparison against a default it never had.
    assert problems_of({**BASE, "health.interval": "x", "health.timeout": "5s"}) == (
        "health.interval: 'x' is not a duration; use a number with a unit such as 500ms, 2s or 5m",
    )


@pytest.mark.parametrize(
    ("problems", "source", "text"),
    [
        (("a: bad",), None, "invalid config: a: bad"),
        (("a: bad",), "cfg.yaml", "invalid config in cfg.yaml: a: bad"),
        (("a: x", "b: y"), "cm", "invalid config in cm (2 problems):\n  - a: x\n  - b: y"),
    ],
)
def test_config_error_text(problems: tuple[str, ...], source: str | None, text: str) -> None:
    error = ConfigError(*problems, source=source)
    assert str(error) == text
    assert error.problems == problems
    assert str(error.with_source("other")).startswith("invalid config in other")


# --- YAML value types --------------------------------------------------------------------------


def test_yaml_scalars_are_read_as_their_text() -> None:
    document = yaml.safe_load(
        """
        active: blue
        upstream.blue: http://b
        upstream.green: http://g
        health.failureThreshold: 4
        rollback.maxErrorRate: 0.1
        rollback.enabled: no
        pool.maxIdle: 0
        """
    )
    config = parse_config(document)
    assert config.health.failure_threshold == 4
    assert config.rollback.max_error_rate == 0.1
    assert config.rollback.enabled is False
    assert config.pool.max_idle == 0


# --- routing table -----------------------------------------------------------------------------


def test_to_routing_table() -> None:
    config = parse_config(
        {
            **BASE,
            "upstream.green": "http://[fd00::7]:8080/",
            "preview.header": "X-Canary",
            "preview.token": "s3cret",
            "preview.trustedCIDRs": "10.0.0.0/8",
            "timeout.connect": "2s",
            "timeout.read": "30s",
            "drain.timeout": "10s",
            "pool.maxIdle": "8",
            "pool.idleTimeout": "1s",
        }
    )
    table = config.to_routing_table("abc123")
    assert table.version == "abc123"
    assert (table.active, table.idle, table.colours) == ("blue", "green", ("blue", "green"))
    blue, green = table.upstreams["blue"], table.upstreams["green"]
    assert (blue.colour, blue.url, blue.host, blue.port) == (
        "blue",
        "http://myapp-blue.default.svc:80",
        "myapp-blue.default.svc",
        80,
    )
    assert (green.host, green.port) == ("fd00::7", 8080)
    assert table.preview.header == "X-Canary"
    assert table.preview_header == b"x-canary"
    assert table.preview.token == b"s3cret"
    assert table.preview.trusted_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert (table.timeouts.connect, table.timeouts.read, table.timeouts.drain) == (2, 30, 10)
    assert (table.pool.max_idle, table.pool.idle_timeout) == (8, 1)
    assert table.choose(b"s3cret", "10.1.2.3").kind == PREVIEW
    assert table.choose(b"wrong", "10.1.2.3").kind == LIVE
    assert table.choose(b"s3cret", "192.168.0.1").colour == "blue"


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("http://svc", "svc", 80),
        ("http://svc/", "svc", 80),
        ("http://svc:8080", "svc", 8080),
        ("http://10.1.2.3:81/", "10.1.2.3", 81),
        ("http://[::1]", "::1", 80),
    ],
)
def test_routing_table_host_and_port(url: str, host: str, port: int) -> None:
    table = parse_config({**BASE, "upstream.green": url}).to_routing_table("v")
    upstream = table.upstreams["green"]
    assert (upstream.host, upstream.port) == (host, port)


def test_routing_table_without_preview_colour() -> None:
    config = parse_config({**BASE, "upstream.red": "http://r"})
    table = config.to_routing_table("v")
    assert table.idle is None
    assert table.preview.token is None
    assert table.choose(b"1", None).colour == "blue"


# --- documents ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"active": "blue"}, {"active": "blue"}),
        ({}, {}),
        (
            {"apiVersion": "v1", "kind": "ConfigMap", "data": {"active": "blue"}},
            {"active": "blue"},
        ),
    ],
)
def test_config_from_document(doc: object, expected: dict[str, object]) -> None:
    assert dict(config_from_document(doc)) == expected


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (None, "the document is empty; expected flat keys"),
        (["active: blue"], "the document is a list; expected flat keys"),
        ("active blue", "the document is a str; expected flat keys"),
        ({"kind": "Deployment", "spec": {}}, "the document is a 'Deployment' manifest"),
        ({"apiVersion": "v1", "data": {}}, "the document is a manifest without kind:"),
        ({"kind": "ConfigMap", "metadata": {}}, "the ConfigMap has no data:"),
        ({"kind": "ConfigMap", "data": ["a"]}, "the ConfigMap's data: is a list"),
        (
            {"kind": "ConfigMap", "data": {"active": "blue", "health.failureThreshold": 3}},
            "data.health.failureThreshold: 3 is a int; a ConfigMap's data holds only strings, "
            'as the API server requires: quote it (health.failureThreshold: "3")',
        ),
        (
            {"kind": "ConfigMap", "data": {"rollback.enabled": True}},
            "data.rollback.enabled: True is a bool; a ConfigMap's data holds only strings, as the "
            'API server requires: quote it (rollback.enabled: "true")',
        ),
        ({"kind": "ConfigMap", "data": {"preview.token": None}}, "data.preview.token: None is a"),
    ],
)
def test_config_from_document_rejects(doc: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_document(doc)
    assert caught.value.problems[0].startswith(message)
    if "data." not in message:
        assert "or a ConfigMap manifest with them under data:" in str(caught.value)


def test_timeout_equal_to_the_interval_is_accepted() -> None:
    # As HAProxy's default check timeout; probes of one colour never overlap.
    config = parse_config({**BASE, "health.interval": "2s", "health.timeout": "2s"})
    assert config.health.timeout == config.health.interval == 2.0


def test_every_non_string_configmap_value_is_reported_and_flat_files_still_take_numbers() -> None:
    doc = {"kind": "ConfigMap", "data": {"a": 1, "b": "x", "c": 0.5}}
    with pytest.raises(ConfigError) as caught:
        config_from_document(doc)
    assert [p.split(":")[0] for p in caught.value.problems] == ["data.a", "data.c"]
    assert config_from_document({"health.failureThreshold": 3}) == {"health.failureThreshold": 3}


# --- with_active -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("active: blue\n", "active: green\n"),
        ("active: blue", "active: green"),
        ("active:   blue   # live colour\n", "active:   green   # live colour\n"),
        ("active: 'blue'\n", "active: 'green'\n"),
        ('active: "blue" # q\n', 'active: "green" # q\n'),
        ('"active": blue\n', '"active": green\n'),
        ("active : blue\n", "active : green\n"),
        ("active:\n", "active: green\n"),
        ("active: blue\r\nx: 1\r\n", "active: green\r\nx: 1\r\n"),
        (
            "# the switch\nactive: blue # keep\nupstream.blue: http://b  # v1\n\n# end\n",
            "# the switch\nactive: green # keep\nupstream.blue: http://b  # v1\n\n# end\n",
        ),
        (
            "kind: ConfigMap\nmetadata:\n  annotations:\n    active: blue\ndata:\n"
            "  # live colour\n\n  active: blue  # here\n  upstream.blue: http://b\n",
            "kind: ConfigMap\nmetadata:\n  annotations:\n    active: blue\ndata:\n"
            "  # live colour\n\n  active: green  # here\n  upstream.blue: http://b\n",
        ),
        (
            "data:  # the keys\n    upstream.blue: x\n    active: blue\nkind: ConfigMap\n",
            "data:  # the keys\n    upstream.blue: x\n    active: green\nkind: ConfigMap\n",
        ),
    ],
)
def test_with_active_rewrites_only_the_value(before: str, after: str) -> None:
    assert with_active(before, "green") == after


@pytest.mark.parametrize(
    ("text", "colour", "message"),
    [
        ("upstream.blue: x\n", "green", "active: found no 'active:' lines"),
        ("  active: blue\n", "green", "active: found no 'active:' lines"),
        ("metadata:\n  active: blue\n", "green", "active: found no 'active:' lines"),
        ("data:\n  nested:\n    active: blue\n", "green", "active: found no 'active:' lines"),
        ("{active: blue}\n", "green", "active: found no 'active:' lines"),
        ("active: blue\nactive: red\n", "green", "active: found 2 'active:' lines"),
        ("active: blue\n", "Green", "active: 'Green' is not a valid colour name"),
        ("active: blue\n", "green\nx: 1", "active: 'green\\nx: 1' is not a valid colour"),
    ],
)
def test_with_active_rejects(text: str, colour: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        with_active(text, colour)
    assert caught.value.problems[0].startswith(message)


def test_with_active_result_parses_to_the_same_config_but_active() -> None:
    text = (
        "# production switch\n"
        "active: blue   # flip me\n"
        "upstream.blue: http://myapp-blue:80\n"
        "upstream.green: http://myapp-green:80\n"
        "health.interval: 5s\n"
    )
    before: Any = yaml.safe_load(text)
    after: Any = yaml.safe_load(with_active(text, "green"))
    assert after == {**before, "active": "green"}
    assert parse_config(after).active == "green"


def test_forwarded_trusted_cidrs_reach_the_routing_table() -> None:
    config = parse_config({**BASE, "forwarded.trustedCIDRs": "10.0.0.0/8, fd00::/8"})
    table = config.to_routing_table("v1")
    assert [str(n) for n in table.forwarded_trusted] == ["10.0.0.0/8", "fd00::/8"]
    assert table.trusts_forwarded_for("10.1.2.3")
    assert not table.trusts_forwarded_for("192.0.2.1")
    with pytest.raises(ConfigError, match=r"forwarded\.trustedCIDRs"):
        parse_config({**BASE, "forwarded.trustedCIDRs": "10.0.0.1/8"})


def test_pool_max_inflight_reaches_the_routing_table() -> None:
    assert parse_config(BASE).to_routing_table("v").pool.max_inflight == 10000
    config = parse_config({**BASE, "pool.maxInflight": "5"})
    assert config.to_routing_table("v").pool.max_inflight == 5
    with pytest.raises(ConfigError, match=r"pool\.maxInflight"):
        parse_config({**BASE, "pool.maxInflight": "-1"})
