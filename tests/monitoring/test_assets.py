"""What deploy/monitoring renders to, and the scrape configs of docs/metrics.md.

tests/deploy renders and validates every kustomization (this one included) with kubectl 1.20 and
a newer kubectl; here the content is checked: the dashboard ConfigMap is the JSON file for
Grafana's sidecar, and the ServiceMonitor finds the admin Service of deploy/base.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import by_name, debian_kubectl, matches, newer_kubectl, render
from tests.monitoring.assets import (
    DASHBOARD_FILE,
    dashboard,
    dashboard_queries,
    doc_block,
    promql_use,
)

SCRAPE_BLOCKS = ("scrape-config: static", "scrape-config: kubernetes-pods")


def kubectls() -> list[str]:
    """Debian's kubectl 1.20 always; the newer system one when the machine has it."""
    return ["debian"] + (["newer"] if newer_kubectl() is not None else [])


@pytest.mark.parametrize("kubectl_case", kubectls())
def test_dashboard_configmap_is_the_json_file_for_the_grafana_sidecar(kubectl_case: str) -> None:
    kubectl = debian_kubectl() if kubectl_case == "debian" else newer_kubectl()
    assert kubectl is not None
    rendered = render("monitoring", kubectl)
    configmap = rendered.find("ConfigMap", "bluegreen-grafana-dashboard")  # no hash suffix
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {"grafana-dashboard.json": DASHBOARD_FILE.read_text()}
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in rendered.documents)
    assert kinds == [
        ("ConfigMap", "bluegreen-grafana-dashboard"),
        ("PrometheusRule", "bluegreen"),
        ("ServiceMonitor", "bluegreen"),
    ]


def test_servicemonitor_selects_the_admin_service_of_the_base() -> None:
    monitor = render("monitoring", debian_kubectl()).find("ServiceMonitor", "bluegreen")
    service = render("base", debian_kubectl()).find("Service", "bluegreen-admin")
    selected = [
        s
        for s in render("base", debian_kubectl()).of_kind("Service")
        if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in selected] == ["bluegreen-admin"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in by_name(service["spec"]["ports"])
    assert by_name(service["spec"]["ports"])[endpoint["port"]]["port"] == 9090
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"


def test_dashboard_uses_the_datasource_variable_everywhere() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${datasource}"}
    users = [p for p in board["panels"] if p["type"] != "row"] + board["annotations"]["list"]
    users += [v for v in variables.values() if v["type"] == "query"]
    for item in users:
        assert item["datasource"] == expected, item.get("title", item.get("name"))
        for target in item.get("targets", []):
            assert target["datasource"] == expected, item["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in board["panels"]}
    for wanted in (
        "Requests per second",
        "Error ratio (5xx / all)",
        "Latency p50 and p99",
        "Active colour",
        "Switches and rollbacks",
        "Upstream health",
    ):
        assert wanted in titles
    assert {a["name"] for a in board["annotations"]["list"]} == {"Switches", "Rollbacks"}
    for wanted in (
        "Leader",
        "Leaders per job",
        "Active colour per replica",
        "Requests per second per replica",
        "Client connections per replica",
        "Upstream connections per replica",
        # The scale row (its queries run in tests/kubernetes/test_scale_status.py).
        "Scaling the idle colour",
        "Scale state per colour",
        "Scale-up time left",
        "Replicas per colour",
    ):
        assert wanted in titles
    latency = "\n".join(expr for where, expr in dashboard_queries() if "Latency" in where)
    assert "histogram_quantile(0.5," in latency and "histogram_quantile(0.99," in latency
    json.dumps(board)  # round-trips


def without_kubernetes_discovery(config: dict[str, Any]) -> dict[str, Any]:
    """Swap each job's kubernetes_sd_configs for a static target carrying the same meta labels.

    Debian builds Prometheus without Kubernetes discovery (its client libraries are not
    packaged), so its promtool rejects the key. Everything else, the relabel rules included, is
    checked as written. test_prometheus_e2e.py runs these relabel rules in a real Prometheus.
    """
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["10.0.0.1:8080"], "labels": POD_META}]
    return config


POD_META = {
    "__meta_kubernetes_namespace": "shop",
    "__meta_kubernetes_pod_name": "bluegreen-0",
    "__meta_kubernetes_pod_label_app_kubernetes_io_name": "bluegreen",
    "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
    "__meta_kubernetes_pod_annotation_prometheus_io_port": "9090",
    "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
}


@pytest.mark.parametrize("marker", SCRAPE_BLOCKS)
def test_documented_scrape_configs_pass_promtool_check_config(
    marker: str, tmp_path: Path, promtool: Path
) -> None:
    config = yaml.safe_load(doc_block(marker))
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "bluegreen"
    assert ("kubernetes_sd_configs" in job) == marker.endswith("kubernetes-pods")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(without_kubernetes_discovery(config)))
    result = subprocess.run(
        [str(promtool), "check", "config", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_dashboard_selects_by_namespace_and_job_everywhere() -> None:
    """Several installations in one Prometheus: every query is scoped by both variables."""
    board = dashboard()
    variables = [v["name"] for v in board["templating"]["list"]]
    assert variables == ["datasource", "namespace", "job"]  # the order they show in
    by_name = {v["name"]: v for v in board["templating"]["list"]}
    assert by_name["namespace"]["query"]["query"] == (
        "label_values(bluegreen_active_colour, namespace)"
    )
    # The jobs offered are those of the chosen namespaces.
    assert by_name["job"]["query"]["query"] == (
        'label_values(bluegreen_active_colour{namespace=~"$namespace"}, job)'
    )
    for name in ("namespace", "job"):
        assert by_name[name]["includeAll"] and by_name[name]["allValue"] == ".*", name
    for where, expr in dashboard_queries():
        for metric, matchers in promql_use(expr).metrics.items():
            scope = {(m.label, m.op, m.value) for m in matchers}
            assert ("namespace", "=~", "$namespace") in scope, f"{where}: {metric} {expr!r}"
            assert ("job", "=~", "$job") in scope, f"{where}: {metric} {expr!r}"


def test_dashboard_has_a_per_replica_view_and_the_leader() -> None:
    """One row shows each replica: its leadership, live colour, traffic and connections."""
    panels = {p["title"]: p for p in dashboard()["panels"]}
    rows = [p for p in dashboard()["panels"] if p["type"] == "row"]
    assert "Replicas and the leader" in [r["title"] for r in rows]
    per_replica = [
        "Leader",
        "Active colour per replica",
        "Requests per second per replica",
        "Client connections per replica",
        "Upstream connections per replica",
    ]
    for title in per_replica:
        exprs = [t["expr"] for t in panels[title]["targets"]]
        assert all("instance" in promql_use(e).grouping_labels for e in exprs), title
    leader = panels["Leader"]["targets"][0]["expr"]
    assert "bluegreen_leader" in promql_use(leader).metrics
    assert promql_use(panels["Leaders per job"]["targets"][0]["expr"]).grouping_labels == {
        "namespace",
        "job",
    }
    # Panels of the new row sit below the others, none overlapping.
    cells = set()
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
