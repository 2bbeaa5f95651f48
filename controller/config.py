"""Flat config keys -> validated `Config` -> `RoutingTable`, with errors that say how to fix them.

Pure code: nothing here reads files or talks to Kubernetes. The same keys come from a ConfigMap's
`data` (strings only) or from a local YAML file (which may give ints, floats and bools; they are
normalised to text first, so both sources behave the same).

The keys, their kinds and defaults are the table in controller/config_keys.py, which drives the
parsing here; the value parsers are in controller/values.py. `Config` is made of the section
types the rest of the code uses as they are (`PreviewPolicy`, `ProbeSettings`, rollback `Policy`,
`ProxyTimeouts`, `PoolSettings`, `ClientLimits`, `RetryPolicy`), so nothing reassembles them.

`preview.colour` is optional. Without it, with exactly two colours the preview colour is the one
that is not active; with three or more, preview is off. Preview is also off while
`preview.colour` names the active colour, so a switch never makes a config invalid.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from controller.config_keys import KEYS, KNOWN_KEYS, SCALE_WORKLOAD_KEY, UPSTREAM_PREFIX, Key
from controller.health_state import ProbeSettings
from controller.rollback import Policy
from controller.scale_plan import SCALE_PREFIX, ScaleSettings
from controller.values import URL, WORKLOAD, check_colour, split_http_url
from proxy.access_log import AccessLogSettings, refused_headers
from proxy.routing import (
    ClientLimits,
    EdgeSettings,
    IPNetwork,
    PoolSettings,
    PreviewPolicy,
    ProxyTimeouts,
    RetryPolicy,
    RoutingTable,
    ShadowSettings,
    TraceSettings,
    Upstream,
)
from proxy.session_affinity import DrainWindow, SessionPolicy

_SETTING_KEYS = frozenset(KNOWN_KEYS) - {"upstream.<colour>", SCALE_WORKLOAD_KEY}
# Read before the table loop, in this order, because the rest refers to the colours.
_COLOUR_KEYS = frozenset({"active", "upstream.<colour>", SCALE_WORKLOAD_KEY})
# Each key's default, parsed once; a default that does not parse fails at import, loudly.
_DEFAULTS: Mapping[str, object] = MappingProxyType(
    {key.name: key.kind.parse(key.default) for key in KEYS if key.default is not None}
)


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


@dataclass(frozen=True, slots=True)
class Config:
    """One validated config. Build it with `parse_config`; durations are in seconds.

    Each field after `upstreams` is filled by the keys of controller/config_keys.py whose target
    names it; a section field's default factory is its type.
    """

    active: str
    upstreams: Mapping[str, str]  # colour -> URL as written, in config order
    preview_colour: str | None = None
    forwarded_trusted: tuple[IPNetwork, ...] = ()  # peers whose X-Forwarded-For is kept
    preview: PreviewPolicy = field(default_factory=PreviewPolicy)
    health: ProbeSettings = field(default_factory=ProbeSettings)
    rollback: Policy = field(default_factory=Policy)
    timeouts: ProxyTimeouts = field(default_factory=ProxyTimeouts)
    pool: PoolSettings = field(default_factory=PoolSettings)
    limits: ClientLimits = field(default_factory=ClientLimits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    edge: EdgeSettings = field(default_factory=EdgeSettings)
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)
    tracing: TraceSettings = field(default_factory=TraceSettings)
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    scale: ScaleSettings = field(default_factory=ScaleSettings)
    session: SessionPolicy = field(default_factory=SessionPolicy)
    revision: str = ""  # free text: a new value is a new desired config (see decision.py)
    # Of the keys it was parsed from (config_fingerprint); set by parse_config, not by a key.
    fingerprint: str = field(default="", compare=False)

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

    def to_routing_table(self, version: str, drain: DrainWindow | None = None) -> RoutingTable:
        """Return the immutable routing table for this config, labelled with `version`.

        `drain` is the session drain window after a switch (proxy/session_affinity.py), which
        the process decides; the config alone has none.
        """
        upstreams = {}
        for colour, url in self.upstreams.items():
            host, port = split_http_url(url)
            upstreams[colour] = Upstream(colour=colour, url=url, host=host, port=port)
        return RoutingTable(
            version=version,
            active=self.active,
            idle=self.idle,
            upstreams=upstreams,
            preview=self.preview,
            timeouts=self.timeouts,
            pool=self.pool,
            forwarded_trusted=self.forwarded_trusted,
            limits=self.limits,
            retry=self.retry,
            edge=self.edge,
            access_log=self.access_log,
            tracing=self.tracing,
            shadow=self.shadow,
            session=self.session,
            drain=drain,
        )


# Fields of Config that no key sets: derived from the keys as a whole.
DERIVED_FIELDS = frozenset({"fingerprint"})

# Section name (a field of Config) -> the type it holds, read off Config itself.
SECTIONS: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {
        f.name: f.default_factory
        for f in dataclasses.fields(Config)
        if f.default_factory is not dataclasses.MISSING
    }
)


def config_fingerprint(settings: Mapping[str, str]) -> str:
    """Identify a desired config: SHA-256 over every key and its text, `active` included.

    Two versions with the same keys and values (a GitOps re-apply, a re-list) have the same
    fingerprint; any change of a value (`active`, an `upstream.*`, `revision`) gives another.
    Key order and YAML number/text spelling do not count (values are compared as text).
    """
    canonical = json.dumps(sorted(settings.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def parse_config(data: Mapping[str, object]) -> Config:
    """Validate the flat key/value mapping whole and return its `Config`.

    Every problem is collected before raising, so one ConfigError lists all of them; nothing of
    an invalid mapping is ever returned.
    """
    problems: list[str] = []
    settings, given, colours = _read_keys(data, problems)
    read = _Reader(settings, problems)
    upstreams = {c: read.text(f"{UPSTREAM_PREFIX}{c}", URL.parse) for c in colours}
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
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key in KEYS:
        if key.name in _COLOUR_KEYS:
            continue
        if key.name == "preview.colour":
            value: object = _check_member(
                key.name, settings.get(key.name), colours, problems, required=False
            )
        else:
            value = read.value(key)
        (sections[key.section] if key.section else top)[key.field] = value
    # A colour that is not configured is reported by the cross-checks, its value left unread.
    sections["scale"]["workloads"] = {
        key.removeprefix(SCALE_PREFIX): (
            read.text(key, WORKLOAD.parse) if key.removeprefix(SCALE_PREFIX) in colours else ""
        )
        for key in settings
        if _is_scale_workload(key)
    }
    config = Config(
        active=active or "",
        upstreams=upstreams,
        **top,
        **{name: SECTIONS[name](**values) for name, values in sections.items()},
        fingerprint=config_fingerprint(settings),
    )
    problems += _cross_checks(config, read.failed)
    if problems:
        raise ConfigError(*problems)
    return config


def _cross_checks(config: Config, failed: set[str]) -> list[str]:
    """Return the problems between keys, skipping any comparison with a value that failed."""
    problems = []
    health = config.health
    # Equal is fine: probes of a colour run one after the other, never overlapping (HAProxy's
    # check timeout defaults to its interval; Kubernetes does not compare timeoutSeconds with
    # periodSeconds either).
    if not failed & {"health.timeout", "health.interval"} and health.timeout > health.interval:
        problems.append(
            f"health.timeout: {_seconds(health.timeout)} must not be longer than "
            f"health.interval ({_seconds(health.interval)}); lower the timeout or "
            "raise the interval"
        )
    preview = config.preview
    if preview.token is not None and preview.token_from_file is not None:
        problems.append(
            "preview.token and preview.tokenFile are both set; keep one (tokenFile, so that the "
            "token lives in a Secret)"
        )
    if config.session.enabled and config.session.cookie == preview.cookie:
        problems.append(
            f"session.cookie: {config.session.cookie!r} is also preview.cookie; give the session "
            "cookie another name (the default is bluegreen_session)"
        )
    for key, size in (
        ("limits.requestHeadSize", config.limits.max_head_size),
        ("limits.uriSize", config.limits.max_uri_size),
    ):
        if key not in failed and size < 256:
            problems.append(f"{key}: {size} bytes is too small for any request; use e.g. 8Ki")
    if not failed & {"accessLog.headers", "preview.header"}:
        refused = refused_headers(config.access_log.headers, config.preview.header)
        if refused:
            problems.append(
                f"accessLog.headers: {', '.join(refused)} is the preview header (preview.header), "
                "whose value may be the preview token; it is never logged, remove it"
            )
    problems += _scale_checks(config, failed)
    return problems


def _is_scale_workload(key: str) -> bool:
    return key.startswith(SCALE_PREFIX) and key not in _SETTING_KEYS


def _scale_checks(config: Config, failed: set[str]) -> list[str]:
    """The scale.* keys against the colours and the rollback window."""
    problems = []
    scale = config.scale
    for colour, name in scale.workloads.items():
        if colour not in config.upstreams:
            key = f"{SCALE_PREFIX}{colour}"
            close = difflib.get_close_matches(key, sorted(_SETTING_KEYS), n=1, cutoff=0.8)
            hint = f"did you mean {close[0]}? " if close else ""
            problems.append(
                f"{key}: {colour!r} is not one of the colours (upstream.<colour>); {hint}"
                f"known colours: {', '.join(config.upstreams) or 'none yet'}"
            )
        shared = [c for c, n in scale.workloads.items() if n == name and n and c != colour]
        if shared and colour < shared[0]:
            problems.append(
                f"{SCALE_PREFIX}{colour} and {SCALE_PREFIX}{shared[0]} both name "
                f"deployment/{name}; each colour needs a Deployment of its own"
            )
    if scale.idle_replicas is not None and not scale.workloads:
        problems.append(
            "scale.idleReplicas is set but no colour names its Deployment; add "
            "scale.<colour>: deployment/NAME for each colour (e.g. scale.blue: deployment/myapp-v1)"
        )
    window = config.rollback.window
    if (
        scale.after is not None
        and not failed & {"scale.after", "rollback.window"}
        and scale.after < window
    ):
        problems.append(
            f"scale.after: {_seconds(scale.after)} is shorter than rollback.window "
            f"({_seconds(window)}); the old colour must stay at full size while an automatic "
            "rollback can still go back to it: raise scale.after, or remove it to use the window"
        )
    return problems


def _read_keys(
    data: Mapping[str, object], problems: list[str]
) -> tuple[dict[str, str], set[str], list[str]]:
    """Sort the given keys: (usable text by key, every known key given, the colours in order)."""
    settings: dict[str, str] = {}  # the keys whose value is usable text
    given: set[str] = set()  # every known key present, usable or not
    colours: list[str] = []
    for key, value in data.items():
        if not isinstance(key, str):
            problems.append(f"{key!r}: keys must be text, such as health.path")
            continue
        is_upstream = key.startswith(UPSTREAM_PREFIX)
        if not is_upstream and key not in _SETTING_KEYS and not _is_scale_workload(key):
            problems.append(_unknown_key(key, value))
            continue
        if _is_scale_workload(key):
            try:
                check_colour(key.removeprefix(SCALE_PREFIX))
            except ValueError:
                problems.append(_unknown_key(key, value))
                continue
        if is_upstream:
            colour = key.removeprefix(UPSTREAM_PREFIX)
            try:
                check_colour(colour)
            except ValueError as error:
                problems.append(f"{key}: colour {error}")
                continue
            colours.append(colour)
        given.add(key)
        text = _as_text(key, value, problems)
        if text is not None:
            settings[key] = text
    return settings, given, colours


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
    # The API server refuses such a manifest ("cannot unmarshal number into Go struct field
    # ConfigMap.data of type string"): say so here, before `kubectl apply` does.
    not_text = [
        f"data.{key}: {value!r} is a {_yaml_kind(value)}; a ConfigMap's data holds only "
        f'strings, as the API server requires: quote it ({key}: "{_plain(value)}")'
        for key, value in data.items()
        if not isinstance(value, str)
    ]
    if not_text:
        raise ConfigError(*not_text)
    return data


def _plain(value: object) -> str:
    """How YAML would have written a scalar had it been quoted: true, 3, 0.5."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


class _Reader:
    """Parses settings one by one, collecting problems instead of stopping at the first."""

    def __init__(self, values: dict[str, str], problems: list[str]) -> None:
        self.values = values
        self.problems = problems
        self.failed: set[str] = set()

    def value(self, key: Key) -> object:
        """Return the key's parsed value, or its default when absent or (reported) invalid."""
        if key.name not in self.values:
            return _DEFAULTS.get(key.name)  # None for a key whose default is derived
        try:
            return key.kind.parse(self.values[key.name])
        except ValueError as error:
            self.problems.append(f"{key.name}: {error}")
            self.failed.add(key.name)
            return _DEFAULTS.get(key.name)

    def text(self, name: str, parse: Callable[[str], str]) -> str:
        """Return the parsed text of a key without a default (an upstream URL); "" if unusable."""
        if name not in self.values:
            return ""  # given without a usable value: already reported
        try:
            return parse(self.values[name])
        except ValueError as error:
            self.problems.append(f"{name}: {error}")
            self.failed.add(name)
            return ""


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


def _seconds(value: float) -> str:
    return f"{value:g}s"
