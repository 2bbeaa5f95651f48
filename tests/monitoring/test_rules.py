"""The PrometheusRule's alerts through Debian's promtool: syntax, and unit tests on series."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.monitoring.assets import METRICS_DOC, RULES_TEST, alert_rules, heading_anchors, rule_spec

# runbook_url: the docs' base from the external label, or the default one; then the section.
RUNBOOK_URL = re.compile(
    r'\{\{ or \$externalLabels\.bluegreen_docs_url "(?P<base>https://[^"\s]+[^/"])" \}\}'
    r"/metrics\.md#(?P<anchor>[a-z]+)"
)


def run_promtool(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Debian's promtool; its output is kept for assertion messages."""
    return subprocess.run(
        [str(promtool), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_rules(directory: Path) -> Path:
    """Write the PrometheusRule's spec as a plain Prometheus rules file."""
    path = directory / "bluegreen.rules.yaml"
    path.write_text(yaml.safe_dump(rule_spec(), sort_keys=False))
    return path


def test_promtool_check_rules_accepts_the_rule_groups(tmp_path: Path, promtool: Path) -> None:
    result = run_promtool(promtool, "check", "rules", str(write_rules(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout, result.stdout


def test_promtool_check_rules_would_catch_a_broken_expression(
    tmp_path: Path, promtool: Path
) -> None:
    """The check above is not vacuous: the same run fails on a bad expression."""
    spec = rule_spec()
    spec["groups"][0]["rules"][0]["expr"] = "sum by (colour (bluegreen_requests_total)"
    path = tmp_path / "broken.rules.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


def test_promtool_unit_tests_fire_on_bad_series_and_stay_quiet_on_good(
    tmp_path: Path, promtool: Path
) -> None:
    tests: dict[str, Any] = yaml.safe_load(RULES_TEST.read_text())
    tests["rule_files"] = [str(write_rules(tmp_path))]
    path = tmp_path / "rules_test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run_promtool(promtool, "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # Every alert has a case where it fires and a case where it must not.
    for rule in alert_rules():
        cases = [
            case
            for group in tests["tests"]
            for case in group["alert_rule_test"]
            if case["alertname"] == rule["alert"]
        ]
        assert any(case["exp_alerts"] for case in cases), f"{rule['alert']} never fires"
        assert any(not case["exp_alerts"] for case in cases), f"{rule['alert']} never stays quiet"


def test_every_alert_is_labelled_annotated_and_documented() -> None:
    anchors = heading_anchors(METRICS_DOC)
    docs = METRICS_DOC.read_text()
    names = {rule["alert"] for rule in alert_rules()}
    assert names == {
        "BluegreenRollback",
        "BluegreenActiveColourUnhealthy",
        "BluegreenConfigRejected",
        "BluegreenReplicasDisagree",
        "BluegreenHighErrorRatio",
    }
    bases: set[str] = set()
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        # An absolute URL (Alertmanager cannot follow a relative one): the Prometheus external
        # label bluegreen_docs_url, else one default base, then the alert's section.
        match = RUNBOOK_URL.fullmatch(annotations["runbook_url"])
        assert match is not None, (name, annotations["runbook_url"])
        bases.add(match["base"])
        anchor = match["anchor"]
        assert anchor == name.lower() and anchor in anchors, f"{name}: no section #{anchor}"
        assert f"| `{name}` | {rule['labels']['severity']} |" in docs, f"{name} not in the table"
    assert len(bases) == 1, f"the alerts link to different default bases: {sorted(bases)}"
    assert f"`{bases.pop()}`" in docs, "the default runbook base is not in docs/metrics.md"
