"""Reading the monitoring assets: the PrometheusRule, the dashboard, the docs, and their PromQL.

The PromQL reader is a small lexer, not a full parser: it finds metric names, the label matchers
attached to each, and the label names in `by`/`without`/`on`/`ignoring`/`group_*` clauses. It
knows function names by the `(` that follows them, so it needs no list of PromQL functions.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
RULE_FILE = MONITORING / "prometheusrule.yaml"
DASHBOARD_FILE = MONITORING / "grafana-dashboard.json"
METRICS_DOC = REPO / "docs" / "metrics.md"
RULES_TEST = Path(__file__).with_name("rules_test.yaml")

# Labels that Prometheus (job, instance), the documented Kubernetes scrape config (namespace,
# pod) or the Prometheus Operator (also service, endpoint, container) put on every series.
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
)

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    |(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    |(?P<range>\[[^\]]*\])
    |(?P<variable>\$\{[^}]*\}|\$[A-Za-z_]\w*)
    |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*)
    |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},@])
    """,
    re.VERBOSE,
)
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = _GROUPING | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_MATCH_OPS = frozenset({"=", "!=", "=~", "!~"})


@dataclass(frozen=True)
class Matcher:
    """One label matcher of a selector, e.g. code=~"5.."."""

    label: str
    op: str
    value: str


@dataclass
class PromQLUse:
    """What one expression uses: metric names with their matchers, and grouping labels."""

    metrics: dict[str, list[Matcher]] = field(default_factory=dict)
    grouping_labels: set[str] = field(default_factory=set)


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[position:]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return str(ast.literal_eval(text))  # PromQL's escapes in a quoted string are Go's, as Python's


def promql_use(expr: str) -> PromQLUse:
    """Return the metric names, their matchers and the grouping labels used by `expr`."""
    tokens = _tokens(expr)
    use = PromQLUse()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in _GROUPING and following == "(":
            i += 2
            while tokens[i][1] != ")":
                if tokens[i][0] == "ident":
                    use.grouping_labels.add(tokens[i][1])
                i += 1
        elif kind == "ident" and following in ("(", "by", "without"):
            pass  # a function, or an aggregation (`sum by (x) (...)` puts the clause first)
        elif kind == "ident" and text.lower() not in _KEYWORDS:
            matchers = use.metrics.setdefault(text, [])
            if following == "{":
                i += 2
                while tokens[i][1] != "}":
                    label, op, value = tokens[i], tokens[i + 1], tokens[i + 2]
                    assert label[0] == "ident" and op[1] in _MATCH_OPS, expr
                    raw = value[1] if value[0] == "variable" else _unquote(value[1])
                    matchers.append(Matcher(label[1], op[1], raw))
                    i += 3
                    if tokens[i][1] == ",":
                        i += 1
        elif text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        i += 1
    return use


def rule_spec() -> dict[str, Any]:
    """Return the PrometheusRule's `spec`: an ordinary Prometheus rules file."""
    document = yaml.safe_load(RULE_FILE.read_text())
    assert document["kind"] == "PrometheusRule"
    spec: dict[str, Any] = document["spec"]
    return spec


def alert_rules() -> list[dict[str, Any]]:
    """Return every alerting rule of the PrometheusRule."""
    return [rule for group in rule_spec()["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    """Return the Grafana dashboard document."""
    document: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return document


def dashboard_queries() -> list[tuple[str, str]]:
    """Return (where, PromQL) for every panel target and annotation of the dashboard."""
    board = dashboard()
    queries = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]
    queries += [
        (f"annotation {annotation['name']!r}", annotation["expr"])
        for annotation in board["annotations"]["list"]
    ]
    return queries


def dashboard_label_values() -> list[tuple[str, str]]:
    """Return (metric, label) of every `label_values(metric, label)` template variable."""
    found = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(
            r"label_values\((\w+)(?:\{[^}]*\})?,\s*(\w+)\)", variable["query"]["query"]
        )
        assert match is not None, variable
        found.append((match.group(1), match.group(2)))
    return found


def doc_block(marker: str) -> str:
    """Return the fenced block that follows `<!-- marker ...-->` in docs/metrics.md."""
    text = METRICS_DOC.read_text()
    match = re.search(
        r"<!-- " + re.escape(marker) + r"\b[^>]*-->\n```(\w+)\n(.*?)\n```", text, re.DOTALL
    )
    assert match is not None, f"no fenced block after <!-- {marker} --> in {METRICS_DOC}"
    return match.group(2) + "\n"


def doc_blocks(language: str) -> list[str]:
    """Return every fenced block of `language` in docs/metrics.md."""
    text = METRICS_DOC.read_text()
    return [m.group(1) for m in re.finditer(r"```" + language + r"\n(.*?)\n```", text, re.DOTALL)]


def heading_anchors(path: Path) -> set[str]:
    """Return the anchors GitHub makes from the Markdown headings of `path`."""
    anchors = set()
    for line in path.read_text().splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors
