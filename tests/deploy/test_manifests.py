"""deploy/ renders with real kubectl, validates against the schemas, and says what it should.

The first tests cover every kustomization under deploy/, with every kubectl available. The rest
read the rendered proxy (deploy/base, and the seed's example overlay built on it) and check what
an operator relies on, with the project's own parsers where there is one: the ConfigMap goes
through controller.config, the container's args through the `bluegreen` argument parser.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from controller.config import Config, parse_config
from tests.deploy.manifests import (
    VALIDATE_VERSIONS,
    Document,
    Kubectl,
    Render,
    by_name,
    container,
    debian_kubectl,
    kustomizations,
    matches,
    newer_kubectl,
    pod_spec,
    render,
    run_arguments,
    validation_errors,
)

# The kustomizations that ship the proxy; each must render the bluegreen Deployment.
PROXY_KUSTOMIZATIONS = ("base", "examples/myapp")
NAMESPACE = "shop"  # any namespace: the kustomizations set none, `kubectl apply -n` picks it


def kubectl_cases() -> list[str]:
    """Debian's kubectl 1.20 always; the system's newer kubectl where the machine has one."""
    return ["debian"] + (["system"] if newer_kubectl() is not None else [])


def kubectl_for(case: str) -> Kubectl:
    """The kubectl a test case names."""
    if case == "debian":
        return debian_kubectl()
    newer = newer_kubectl()
    assert newer is not None
    return newer


def canonical(documents: tuple[Document, ...]) -> list[Document]:
    """Documents in a fixed order, so that two renders can be compared."""
    return sorted(documents, key=lambda d: (d["apiVersion"], d["kind"], d["metadata"]["name"]))


@pytest.mark.parametrize("kustomization", kustomizations())
@pytest.mark.parametrize("kubectl_case", kubectl_cases())
def test_every_kustomization_renders_and_validates(kustomization: str, kubectl_case: str) -> None:
    kubectl = kubectl_for(kubectl_case)
    rendered = render(kustomization, kubectl)
    assert rendered.documents, f"deploy/{kustomization} renders nothing"
    for document in rendered.documents:
        assert {"apiVersion", "kind", "metadata"} <= document.keys()
        assert document["metadata"].get("name"), document
        # The user picks the namespace (`kubectl apply -k DIR -n NAMESPACE`).
        assert "namespace" not in document["metadata"], document["metadata"]
    keys = [(d["kind"], d["metadata"]["name"]) for d in rendered.documents]
    assert len(keys) == len(set(keys)), f"duplicate objects: {keys}"
    errors = [
        f"[{version}] {error}"
        for version in VALIDATE_VERSIONS
        for document in rendered.documents
        for error in validation_errors(document, version)
    ]
    assert not errors, "\n".join(errors)
    if kubectl_case != "debian":
        # kustomize v5 must build exactly what v2.0.3 builds: one set of manifests for both.
        oldest = render(kustomization, debian_kubectl())
        assert canonical(rendered.documents) == canonical(oldest.documents)


def test_validation_rejects_what_it_should() -> None:
    """The validators are not a formality: typos, wrong types and unknown kinds all fail."""
    rendered = render("base", debian_kubectl())
    typo = rendered.find("Deployment", "bluegreen")
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert any("readinesProbe" in e for e in validation_errors(typo, "1.30"))
    wrong_type = rendered.find("Service", "bluegreen")
    wrong_type["spec"]["ports"][0]["nodePort"] = "30080"
    assert validation_errors(wrong_type, "1.30")
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "m"},
        "spec": {"endpoints": [{"port": "admin", "interval": "30 s"}]},
    }
    errors = validation_errors(monitor, "1.30")
    assert any("'selector' is a required property" in e for e in errors), errors
    assert any("interval" in e for e in errors), errors
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "r"},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "for": "5 minutes"}]}]},
    }
    errors = validation_errors(rule, "1.30")
    assert any("'expr' is a required property" in e for e in errors), errors
    assert any("for" in e for e in errors), errors
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert any("no schema" in e for e in validation_errors(unknown, "1.30"))


# -- the proxy as rendered ------------------------------------------------------------------------


def proxy(kustomization: str) -> Render:
    """The rendered kustomization, built by the oldest kustomize the manifests support."""
    return render(kustomization, debian_kubectl())


def shipped_config(rendered: Render) -> Config:
    """The ConfigMap the proxy reads, validated by the proxy's own parser."""
    name = run_arguments(rendered, NAMESPACE).configmap.name
    return parse_config(rendered.find("ConfigMap", name)["data"])


@pytest.mark.parametrize("kustomization", PROXY_KUSTOMIZATIONS)
def test_the_proxy_reads_its_own_namespaces_configmap_which_is_valid(kustomization: str) -> None:
    rendered = proxy(kustomization)
    args = run_arguments(rendered, NAMESPACE)
    assert args.command == "run"
    assert args.configmap is not None and args.config is None
    assert (args.configmap.namespace, args.configmap.name) == (NAMESPACE, "bluegreen")
    assert args.kubeconfig is None  # in a pod: the mounted ServiceAccount token
    config = shipped_config(rendered)
    assert config.active == "blue"
    assert set(config.upstreams) == {"blue", "green"}
    assert config.idle == "green"
    data = rendered.find("ConfigMap", "bluegreen")["data"]
    # The defaults an operator most often asks about are written out, not implied.
    for key in ("drain.timeout", "health.path", "health.interval", "rollback.enabled"):
        assert key in data, key
    assert config.timeouts.drain == 30.0


@pytest.mark.parametrize("kustomization", PROXY_KUSTOMIZATIONS)
def test_listeners_match_the_named_container_ports(kustomization: str) -> None:
    rendered = proxy(kustomization)
    args = run_arguments(rendered, NAMESPACE)
    ports = by_name(container(rendered)["ports"])
    assert set(ports) == {"http", "admin"}
    assert (args.listen.host, args.listen.port) == ("0.0.0.0", ports["http"]["containerPort"])
    assert (args.admin_listen.host, args.admin_listen.port) == (
        "0.0.0.0",
        ports["admin"]["containerPort"],
    )
    assert ports["http"]["containerPort"] == 8080
    assert ports["admin"]["containerPort"] == 9090


@pytest.mark.parametrize("kustomization", PROXY_KUSTOMIZATIONS)
def test_image_replicas_and_rollout(kustomization: str) -> None:
    rendered = proxy(kustomization)
    deployment = rendered.find("Deployment", "bluegreen")
    spec = container(rendered)
    assert spec["image"] == "bluegreen:0.1.0"
    assert spec["imagePullPolicy"] == "IfNotPresent"
    assert deployment["spec"]["replicas"] == 2
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0  # an upgrade never drops below two ready replicas
    assert matches(
        deployment["spec"]["selector"]["matchLabels"],
        deployment["spec"]["template"]["metadata"]["labels"],
    )


@pytest.mark.parametrize("kustomization", PROXY_KUSTOMIZATIONS)
def test_security_context_is_restricted(kustomization: str) -> None:
    rendered = proxy(kustomization)
    pod = pod_spec(rendered).get("securityContext", {})
    own = container(rendered).get("securityContext", {})

    def effective(key: str) -> Any:
        return own.get(key, pod.get(key))

    assert effective("runAsNonRoot") is True
    assert effective("runAsUser") == 10001  # the image's user (Dockerfile: USER 10001)
    assert effective("seccompProfile") == {"type": "RuntimeDefault"}
    assert own["allowPrivilegeEscalation"] is False
    assert own["readOnlyRootFilesystem"] is True
    assert own["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in own["capabilities"]
    assert not own.get("privileged", False)
    # Read-only root: the only writable path is a small /tmp.
    mounts = {m["mountPath"]: m for m in container(rendered).get("volumeMounts", [])}
    assert set(mounts) == {"/tmp"}
    volumes = by_name(pod_spec(rendered)["volumes"])
    tmp = volumes[mounts["/tmp"]["name"]]
    assert "emptyDir" in tmp and tmp["emptyDir"].get("sizeLimit")


@pytest.mark.parametrize("kustomization", PROXY_KUSTOMIZATIONS)
def test_probes_use_the_admin_port(kustomization: str) -> None:
    spec = container(proxy(kustomization))
    readiness = spec["readinessProbe"]["httpGet"]
    liveness = spec["livenessProbe"]["httpGet"]
    assert (readiness["path"], readiness["port"]) == ("/readyz", "admin")
    assert (liveness["path"], liveness["port"]) == ("/healthz", "admin")
    # Readiness reacts within seconds; liveness is slower to kill than readiness is to drain.
    ready = spec["readinessProbe"]
    alive = spec["livenessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 5
    assert alive["periodSeconds"] * alive["failureThreshold"] > (
        ready["periodSeconds"] * ready["failureThreshold"]
    )


@pytest.mark.parametrize("kustomization", PROXY_KUSTOMIZATIONS)
def test_termination_outlasts_the_prestop_delay_and_the_drain(kustomization: str) -> None:
    rendered = proxy(kustomization)
    pre_stop = container(rendered)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "/bin/sleep"  # exists in the python slim image
    delay = float(pre_stop[1])
    assert delay >= 3, "endpoints need a few seconds to forget a terminating pod"
    args = run_arguments(rendered, NAMESPACE)
    config = shipped_config(rendered)
    # After preStop, SIGTERM: the process waits --shutdown-delay, then gives in-flight requests
    # --shutdown-grace; streams on an old colour may live drain.timeout.
    process_needs = args.shutdown_delay + max(args.shutdown_grace, config.timeouts.drain)
    grace = pod_spec(rendered)["terminationGracePeriodSeconds"]
    assert grace > delay + process_needs, (grace, delay, process_needs)


@pytest.mark.parametrize("kustomization", PROXY_KUSTOMIZATIONS)
def test_resources_are_requested_and_limited(kustomization: str) -> None:
    resources = container(proxy(kustomization))["resources"]
    units = {"m": 0.001, "Mi": 2**20, "Gi": 2**30, "": 1.0}

    def quantity(text: str) -> float:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Mi|Gi|)", str(text))
        assert match is not None, text
        return float(match.group(1)) * units[match.group(2)]

    for resource in ("cpu", "memory"):
        request = quantity(resources["requests"][resource])
        limit = quantity(resources["limits"][resource])
        assert 0 < request <= limit, (resource, request, limit)
    assert quantity(resources["requests"]["memory"]) >= 64 * 2**20
    assert quantity(resources["limits"]["memory"]) <= 512 * 2**20


@pytest.mark.parametrize("kustomization", PROXY_KUSTOMIZATIONS)
def test_replicas_spread_across_nodes(kustomization: str) -> None:
    rendered = proxy(kustomization)
    pod = pod_spec(rendered)
    labels = rendered.find("Deployment", "bluegreen")["spec"]["template"]["metadata"]["labels"]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    by_host = spread["kubernetes.io/hostname"]
    assert by_host["maxSkew"] == 1
    assert matches(by_host["labelSelector"]["matchLabels"], labels)
    preferred = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert any(
        term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        and matches(term["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
        for term in preferred
    )


@pytest.mark.parametrize("kustomization", PROXY_KUSTOMIZATIONS)
def test_pod_disruption_budget_keeps_one_replica(kustomization: str) -> None:
    rendered = proxy(kustomization)
    pdb = rendered.find("PodDisruptionBudget", "bluegreen")
    assert pdb["apiVersion"] == "policy/v1"
    deployment = rendered.find("Deployment", "bluegreen")
    assert pdb["spec"]["minAvailable"] == 1 < deployment["spec"]["replicas"]
    assert matches(
        pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]
    )


@pytest.mark.parametrize("kustomization", PROXY_KUSTOMIZATIONS)
def test_services_entry_on_nodeport_30080_and_admin_for_scraping(kustomization: str) -> None:
    rendered = proxy(kustomization)
    labels = rendered.find("Deployment", "bluegreen")["spec"]["template"]["metadata"]["labels"]
    ports = by_name(container(rendered)["ports"])
    entry = rendered.find("Service", "bluegreen")
    assert entry["spec"]["type"] == "NodePort"
    assert matches(entry["spec"]["selector"], labels)
    [http] = entry["spec"]["ports"]
    assert (http["port"], http["targetPort"], http["nodePort"]) == (80, "http", 30080)
    admin = rendered.find("Service", "bluegreen-admin")
    assert admin["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert matches(admin["spec"]["selector"], labels)
    [scrape] = admin["spec"]["ports"]
    assert (scrape["name"], scrape["port"], scrape["targetPort"]) == ("admin", 9090, "admin")
    assert admin["metadata"]["labels"]["app.kubernetes.io/name"] == "bluegreen"
    assert admin["metadata"]["labels"]["app.kubernetes.io/component"] == "admin"
    pod_annotations = rendered.find("Deployment", "bluegreen")["spec"]["template"]["metadata"][
        "annotations"
    ]
    for scraped in (pod_annotations, admin["metadata"]["annotations"]):
        assert scraped["prometheus.io/scrape"] == "true"
        assert scraped["prometheus.io/port"] == str(ports["admin"]["containerPort"])
        assert scraped["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("kustomization", PROXY_KUSTOMIZATIONS)
def test_rbac_is_pinned_to_the_configmap_and_the_lease(kustomization: str) -> None:
    rendered = proxy(kustomization)
    ref = run_arguments(rendered, NAMESPACE).configmap
    role = rendered.find("Role", "bluegreen")
    assert not rendered.of_kind("ClusterRole") and not rendered.of_kind("ClusterRoleBinding")
    named: dict[str, set[str]] = {}
    unnamed: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        for resource in rule["resources"]:
            target = named if rule.get("resourceNames") else unnamed
            target.setdefault(resource, set()).update(rule["verbs"])
            if resource == "configmaps":
                assert rule["resourceNames"] == [ref.name]
            if resource == "leases":
                # controller/process.py names the Lease after the ConfigMap.
                assert rule.get("resourceNames", [f"{ref.name}-leader"]) == [f"{ref.name}-leader"]
    assert named == {
        "configmaps": {"get", "list", "watch", "patch"},
        "leases": {"get", "update", "patch"},
    }
    # Only what Kubernetes cannot limit by name: creating Events and the Lease.
    assert unnamed == {"events": {"create", "patch"}, "leases": {"create"}}

    pod = pod_spec(rendered)
    account = rendered.find("ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is True  # the proxy needs its token, nobody else
    binding = rendered.find("RoleBinding", "bluegreen")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "bluegreen",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"]}]


# -- the seed's example ---------------------------------------------------------------------------


def test_example_runs_the_seed_app_as_blue_and_green() -> None:
    rendered = proxy("examples/myapp")
    for version, image in (("v1", "myapp:v1"), ("v2", "myapp:v2")):
        deployment = rendered.find("Deployment", f"myapp-{version}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels == {"app": "myapp", "version": version}
        assert deployment["spec"]["replicas"] == 10
        [app] = deployment["spec"]["template"]["spec"]["containers"]
        assert app["image"] == image
        assert [p["containerPort"] for p in app["ports"]] == [80]
        assert app["readinessProbe"]["httpGet"]["path"] == "/"
        assert app["securityContext"]["allowPrivilegeEscalation"] is False


def test_example_wires_each_colour_to_exactly_one_version() -> None:
    rendered = proxy("examples/myapp")
    config = shipped_config(rendered)
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in rendered.of_kind("Deployment")
    }
    expected = {"blue": "myapp-v1", "green": "myapp-v2"}
    for colour, url in config.upstreams.items():
        parts = urlsplit(url)
        assert parts.hostname is not None
        service = rendered.find("Service", parts.hostname)
        [port] = service["spec"]["ports"]
        assert parts.port == port["port"]
        selected = [
            name for name, labels in pods.items() if matches(service["spec"]["selector"], labels)
        ]
        assert selected == [expected[colour]], (colour, selected)
    # The seed's mistake is gone: no Service selects both versions of myapp.
    for service in rendered.of_kind("Service"):
        selected = [n for n, labels in pods.items() if matches(service["spec"]["selector"], labels)]
        assert selected != ["myapp-v1", "myapp-v2"], service["metadata"]["name"]
    # bluegreen probes what the app serves: the path its readiness probe already uses.
    probe = rendered.find("Deployment", "myapp-v1")["spec"]["template"]["spec"]["containers"][0]
    assert config.health.path == probe["readinessProbe"]["httpGet"]["path"]
