"""Render deploy/'s kustomizations with real kubectl binaries, and validate what they render.

* Every directory under deploy/ with a kustomization.yaml is covered (`kustomizations`), so a new
  overlay is tested the moment it lands.
* `kubectl kustomize` runs with Debian's kubectl 1.20 (kustomize v2.0.3: the oldest dialect the
  manifests promise to speak) and, when the machine has one, a newer /usr/bin/kubectl too.
* Built-in kinds are validated by kubernetes-validate in strict mode (unknown fields are errors).
  It has no schema for custom resources: ServiceMonitor and PrometheusRule are validated against
  the minimal CRD schemas in crds.yaml, the same ones the apply tests install in kube-apiserver.
  A kind known to neither is an error.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import yaml

from controller.cli import build_parser
from tests.tools import debian_tool

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CRDS = Path(__file__).resolve().with_name("crds.yaml")
SYSTEM_KUBECTL = Path("/usr/bin/kubectl")
# The oldest schemas kubernetes-validate ships, and a recent release. deploy/ needs 1.21+
# (policy/v1 PodDisruptionBudget); nothing in it is deprecated by 1.30.
VALIDATE_VERSIONS = ("1.25", "1.30")

Document = dict[str, Any]


def kustomizations() -> list[str]:
    """Every directory under deploy/ holding a kustomization.yaml, relative to deploy/."""
    return sorted(
        path.parent.relative_to(DEPLOY).as_posix() for path in DEPLOY.rglob("kustomization.yaml")
    )


@dataclass(frozen=True)
class Kubectl:
    """A kubectl binary and the Kubernetes version it was built for."""

    path: Path
    major: int
    minor: int

    @property
    def name(self) -> str:
        """A short id for test names: kubectl-1.20."""
        return f"kubectl-{self.major}.{self.minor}"


def kubectl_version(path: Path) -> Kubectl:
    """Ask a kubectl binary for its client version."""
    result = subprocess.run(
        [str(path), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    info = json.loads(result.stdout)["clientVersion"]
    match = re.match(r"v?(\d+)\.(\d+)", info["gitVersion"])
    assert match is not None, f"{path}: unexpected version {info['gitVersion']!r}"
    return Kubectl(path, int(match.group(1)), int(match.group(2)))


@functools.cache
def debian_kubectl() -> Kubectl:
    """Debian's kubectl 1.20 (fetched by tests/tools/fetch_debian_tools.sh); an error if missing."""
    return kubectl_version(debian_tool("kubectl"))


@functools.cache
def newer_kubectl() -> Kubectl | None:
    """The system's /usr/bin/kubectl when it exists and is newer than Debian's, else None.

    Not every machine has one (CI may not), so it adds test cases rather than being required.
    """
    if not SYSTEM_KUBECTL.exists():
        return None
    system = kubectl_version(SYSTEM_KUBECTL)
    try:
        oldest = debian_kubectl()
    except FileNotFoundError:
        # Called while collecting tests: the cases that need Debian's kubectl fail on their own.
        oldest = Kubectl(SYSTEM_KUBECTL, 1, 20)
    return system if (system.major, system.minor) > (oldest.major, oldest.minor) else None


@dataclass(frozen=True)
class Render:
    """What `kubectl kustomize` printed for one kustomization."""

    documents: tuple[Document, ...]
    stderr: str

    def find(self, kind: str, name: str) -> Document:
        """The one document of this kind and name; fails the test when it is missing."""
        found = [d for d in self.documents if d["kind"] == kind and d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
        return copy.deepcopy(found[0])

    def of_kind(self, kind: str) -> list[Document]:
        """Every document of a kind (copies: tests may change them)."""
        return [copy.deepcopy(d) for d in self.documents if d["kind"] == kind]

    def yaml(self) -> str:
        """The documents again as one multi-document YAML stream."""
        return yaml.safe_dump_all(list(self.documents), sort_keys=False)


@functools.cache
def render(kustomization: str, kubectl: Kubectl) -> Render:
    """`kubectl kustomize deploy/<kustomization>`, parsed; fails with kubectl's message."""
    result = subprocess.run(
        [str(kubectl.path), "kustomize", str(DEPLOY / kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        f"{kubectl.name} kustomize deploy/{kustomization} failed:\n{result.stderr}"
    )
    documents = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
    return Render(documents, result.stderr)


@functools.cache
def crd_schemas() -> Mapping[tuple[str, str], Document]:
    """The openAPIV3Schema of each (apiVersion, kind) defined in crds.yaml."""
    schemas: dict[tuple[str, str], Document] = {}
    for crd in yaml.safe_load_all(CRDS.read_text(encoding="utf-8")):
        spec = crd["spec"]
        for version in spec["versions"]:
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def validation_errors(document: Document, kube_version: str) -> list[str]:
    """Why `document` is not valid for `kube_version`: an empty list when it is.

    Built-in kinds: kubernetes-validate, strict. Custom resources: their schema in crds.yaml
    (OpenAPI v3 schemas are checked as JSON Schema draft 4; x-kubernetes-* keywords are
    extensions that jsonschema ignores). A kind with no schema anywhere is an error.
    """
    where = f"{document.get('kind')} {document.get('metadata', {}).get('name')!r}"
    try:
        kubernetes_validate.validate(document, kube_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        return [f"{where}: {path}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        schema = crd_schemas().get((document["apiVersion"], document["kind"]))
        if schema is None:
            return [
                f"{where}: no schema for {document['apiVersion']} {document['kind']} in "
                f"kubernetes-validate {kube_version} or in {CRDS.relative_to(REPO)}"
            ]
        validator = jsonschema.Draft4Validator(schema)
        return [
            f"{where}: {'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
            for error in validator.iter_errors(document)
        ]
    return []


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether an equality selector (matchLabels or a Service's selector) matches `labels`."""
    return all(labels.get(key) == value for key, value in selector.items())


def by_name(items: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Index a list of named items (containers, ports, env) by their `name`."""
    return {item["name"]: item for item in items}


# -- the proxy's pod, as the kubelet would run it --------------------------------------------------


def pod_spec(rendered: Render) -> dict[str, Any]:
    """The proxy Deployment's pod spec."""
    spec: dict[str, Any] = rendered.find("Deployment", "bluegreen")["spec"]["template"]["spec"]
    return spec


def container(rendered: Render) -> dict[str, Any]:
    """The proxy container."""
    containers = by_name(pod_spec(rendered)["containers"])
    assert list(containers) == ["bluegreen"]
    return dict(containers["bluegreen"])


def kubelet_expand(text: str, env: Mapping[str, str]) -> str:
    """Expand $(VAR) references in args the way the kubelet does ($$ escapes a dollar)."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, text)


def run_arguments(rendered: Render, namespace: str) -> argparse.Namespace:
    """The container's command line, as `bluegreen` parses it in a pod of `namespace`.

    The image's ENTRYPOINT is `bluegreen run`; the Deployment gives the rest as args, with
    downward-API variables that the kubelet expands first.
    """
    spec = container(rendered)
    assert "command" not in spec, "the image's ENTRYPOINT (bluegreen run) must stay"
    env: dict[str, str] = {}
    for variable in spec.get("env", []):
        field = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if field == "metadata.namespace":
            env[variable["name"]] = namespace
        elif "value" in variable:
            env[variable["name"]] = variable["value"]
    args = [kubelet_expand(arg, env) for arg in spec["args"]]
    return build_parser().parse_args(["run", *args])
