"""The one module that talks to the Kubernetes API: the ConfigMap, its watch, and Events.

API errors map to a few named exceptions (chained with `from`), so callers decide on meaning
(conflict, gone, not found) instead of status codes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.rest import ApiException

from controller.kubeconfig import ClusterAccess, KubeconfigError

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
# Server-side end of each watch; the source resumes from the last resourceVersion it saw.
WATCH_TIMEOUT_SECONDS = 240


class KubeError(Exception):
    """The API server refused or failed a request."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConflictError(KubeError):
    """409: the object changed since it was read, or already exists."""


class NotFoundError(KubeError):
    """404: the object does not exist."""


class GoneError(KubeError):
    """410: the resourceVersion to watch from is too old; list again."""


class ForbiddenError(KubeError):
    """403: the service account lacks a permission (see deploy/'s Role)."""


_ERRORS: dict[int, type[KubeError]] = {
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
}


def _error(status: int, reason: str, what: str) -> KubeError:
    return _ERRORS.get(status, KubeError)(f"{what}: {status} {reason}".strip(), status)


def _translate(error: ApiException, what: str) -> KubeError:
    return _error(int(error.status or 0), str(error.reason or ""), what)


async def _json(response: Any, what: str) -> dict[str, Any]:
    """Read a raw (not preloaded) response, raising the named error for a non-2xx status.

    With `_preload_content=False` the client returns error responses instead of raising.
    """
    try:
        body: dict[str, Any] = await response.json(content_type=None)
    finally:
        response.release()
    if not 200 <= response.status <= 299:
        raise _error(response.status, str(body.get("message") or response.reason), what)
    return body


_REF = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)/([a-z0-9]([-.a-z0-9]*[a-z0-9])?)$")


_NAME = re.compile(r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class ConfigMapRef:
    """Which ConfigMap holds the config: NAMESPACE/NAME."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> ConfigMapRef:
        """Parse `NAMESPACE/NAME`, raising ValueError with an example when malformed."""
        match = _REF.match(text)
        if match is None:
            raise ValueError(
                f"{text!r} is not NAMESPACE/NAME of a ConfigMap (for example default/bluegreen)"
            )
        return cls(match.group(1), match.group(3))

    @classmethod
    def resolve(cls, text: str, namespace: str) -> ConfigMapRef:
        """Parse `NAME` in `namespace`, or `NAMESPACE/NAME` (which must agree with `namespace`).

        `namespace` is what `-n` says, or else the kubeconfig context's namespace.
        """
        if "/" in text:
            return cls.parse(text)
        ref = cls.parse(f"{namespace}/{text}") if _NAME.match(text) else None
        if ref is None:
            raise ValueError(
                f"{text!r} is not the name of a ConfigMap (lower-case letters, digits, '-' "
                "and '.'; for example bluegreen, or default/bluegreen)"
            )
        return ref

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ConfigMapVersion:
    """One version of the ConfigMap as the API server stored it."""

    data: Mapping[str, str]
    resource_version: str
    uid: str
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One event of a ConfigMap watch; `version` is None for bookmarks and deletions."""

    kind: str  # ADDED, MODIFIED, DELETED or BOOKMARK
    resource_version: str
    version: ConfigMapVersion | None


async def load_api_client(kubeconfig: Path | None, context: str | None = None) -> client.ApiClient:
    """Create an API client: from `kubeconfig`, in-cluster in a pod, else the default kubeconfig.

    `context` picks a kubeconfig context other than the current one. A missing kubeconfig or
    context raises KubeconfigError saying what to pass, not the library's parser message.
    """
    access = ClusterAccess(kubeconfig, context)
    configuration = client.Configuration()
    if access.in_cluster:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    files = access.files()  # raises KubeconfigError with the fix when there is none
    try:
        await config.load_kube_config(
            config_file=str(kubeconfig) if kubeconfig is not None else None,
            context=context,
            client_configuration=configuration,
        )
    except config.ConfigException as error:
        where = ", ".join(str(f) for f in files)
        raise KubeconfigError(
            f"cannot use kubeconfig {where}: {error}; check it with `kubectl config view`"
        ) from error
    return client.ApiClient(configuration)


def _version(raw: Mapping[str, Any]) -> ConfigMapVersion:
    metadata = raw.get("metadata") or {}
    return ConfigMapVersion(
        data=dict(raw.get("data") or {}),
        resource_version=str(metadata.get("resourceVersion", "")),
        uid=str(metadata.get("uid", "")),
        annotations=dict(metadata.get("annotations") or {}),
    )


class KubeClient:
    """ConfigMap reads, watches and patches, and Events, for one ConfigMap."""

    def __init__(self, api: client.ApiClient, ref: ConfigMapRef) -> None:
        self.api = api
        self.ref = ref
        self.core = client.CoreV1Api(api)

    async def read(self) -> ConfigMapVersion:
        """Read the ConfigMap now."""
        try:
            raw: Any = await self.core.read_namespaced_config_map(
                self.ref.name, self.ref.namespace, _preload_content=False
            )
        except ApiException as error:
            raise _translate(error, f"reading ConfigMap {self.ref}") from error
        return _version(await _json(raw, f"reading ConfigMap {self.ref}"))

    async def list_one(self) -> tuple[ConfigMapVersion | None, str]:
        """List the one ConfigMap; return it (None if absent) and the list's resourceVersion."""
        try:
            raw: Any = await self.core.list_namespaced_config_map(
                self.ref.namespace,
                field_selector=f"metadata.name={self.ref.name}",
                _preload_content=False,
            )
        except ApiException as error:
            raise _translate(error, f"listing ConfigMap {self.ref}") from error
        listing = await _json(raw, f"listing ConfigMap {self.ref}")
        items = listing.get("items") or []
        resource_version = str((listing.get("metadata") or {}).get("resourceVersion", ""))
        return (_version(items[0]) if items else None), resource_version

    async def watch(self, resource_version: str) -> AsyncIterator[WatchEvent]:
        """Watch the ConfigMap from `resource_version` until the server ends the watch.

        Raises GoneError when that version is too old (410), KubeError on other API errors.
        """
        stream = watch.Watch()
        try:
            async with stream.stream(
                self.core.list_namespaced_config_map,
                self.ref.namespace,
                field_selector=f"metadata.name={self.ref.name}",
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_TIMEOUT_SECONDS,
            ) as events:
                async for event in events:
                    kind = str(event["type"])
                    raw = event["raw_object"]
                    version = _version(raw)
                    yield WatchEvent(
                        kind,
                        version.resource_version,
                        version if kind in ("ADDED", "MODIFIED") else None,
                    )
        except ApiException as error:
            raise _translate(error, f"watching ConfigMap {self.ref}") from error

    async def patch(
        self,
        resource_version: str,
        data: Mapping[str, str] | None = None,
        annotations: Mapping[str, str | None] | None = None,
    ) -> ConfigMapVersion:
        """Merge-patch data keys and annotations, only if the ConfigMap is still at that version.

        An annotation given as None is removed. The resourceVersion in the patch makes the API
        server refuse it with 409 when anything wrote in between, so of several writers deciding
        on the same version exactly one wins.
        """
        metadata: dict[str, Any] = {"resourceVersion": resource_version}
        if annotations:
            metadata["annotations"] = dict(annotations)
        body: dict[str, Any] = {"metadata": metadata}
        if data:
            body["data"] = dict(data)
        try:
            raw: Any = await self.core.patch_namespaced_config_map(
                self.ref.name,
                self.ref.namespace,
                body,
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]  # accepted, not in the stubs
                _preload_content=False,
            )
        except ApiException as error:
            raise _translate(error, f"patching ConfigMap {self.ref}") from error
        return _version(await _json(raw, f"patching ConfigMap {self.ref}"))

    async def event(
        self,
        version: ConfigMapVersion,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        about: str = "",
    ) -> bool:
        """Record an Event on the ConfigMap, once per ConfigMap version, reason and `about`.

        The name is derived from the ConfigMap's name, resourceVersion, reason (and `about`,
        such as a colour, when one version may see several), so when every replica reports the
        same version, the first create wins and the rest get 409 and return False.
        """
        now = datetime.now(UTC)
        name = f"{self.ref.name}.{version.resource_version}.{reason.lower()}"
        if about:
            name += f".{about}"
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=name, namespace=self.ref.namespace),
            involved_object=client.V1ObjectReference(
                api_version="v1",
                kind="ConfigMap",
                name=self.ref.name,
                namespace=self.ref.namespace,
                uid=version.uid or None,
                resource_version=version.resource_version,
            ),
            reason=reason,
            message=message[:1024],
            type="Warning" if warning else "Normal",
            source=client.V1EventSource(component="bluegreen"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            await self.core.create_namespaced_event(self.ref.namespace, body)
        except ApiException as error:
            translated = _translate(error, f"creating Event {name}")
            if isinstance(translated, ConflictError):
                return False
            raise translated from error
        return True

    async def events(self) -> list[dict[str, Any]]:
        """List the Events about this ConfigMap, oldest first (for `status` and tests)."""
        try:
            raw: Any = await self.core.list_namespaced_event(
                self.ref.namespace,
                field_selector=(
                    f"involvedObject.kind=ConfigMap,involvedObject.name={self.ref.name}"
                ),
                _preload_content=False,
            )
        except ApiException as error:
            raise _translate(error, f"listing Events of {self.ref}") from error
        listing = await _json(raw, f"listing Events of {self.ref}")
        items: list[dict[str, Any]] = listing.get("items") or []
        return sorted(items, key=lambda e: str(e.get("metadata", {}).get("creationTimestamp")))


@dataclass(frozen=True, slots=True)
class ReadyPod:
    """A pod behind a Service that is ready (its Endpoints list it as ready), and its port."""

    name: str
    port: int


async def ready_pods(api: client.ApiClient, namespace: str, service: str) -> list[ReadyPod]:
    """List the ready pods behind a Service, from its Endpoints (NotFoundError: no Service)."""
    core = client.CoreV1Api(api)
    try:
        raw: Any = await core.read_namespaced_endpoints(service, namespace, _preload_content=False)
    except ApiException as error:
        raise _translate(error, f"reading Endpoints {namespace}/{service}") from error
    endpoints = await _json(raw, f"reading Endpoints {namespace}/{service}")
    pods: list[ReadyPod] = []
    for subset in endpoints.get("subsets") or []:
        ports = subset.get("ports") or []
        if not ports:
            continue
        port = int(ports[0].get("port", 0))
        for address in subset.get("addresses") or []:  # notReadyAddresses are left out
            target = address.get("targetRef") or {}
            if target.get("kind") == "Pod" and target.get("name"):
                pods.append(ReadyPod(str(target["name"]), port))
    return sorted(pods, key=lambda pod: pod.name)


async def pod_get(api: client.ApiClient, namespace: str, pod: ReadyPod, path: str) -> bytes:
    """GET `path` on a pod's port through the API server's pod proxy (as `kubectl proxy` does)."""
    core = client.CoreV1Api(api)
    try:
        raw: Any = await core.connect_get_namespaced_pod_proxy_with_path(
            f"{pod.name}:{pod.port}", namespace, path.lstrip("/"), _preload_content=False
        )
    except ApiException as error:
        raise _translate(error, f"reading {path} of pod {namespace}/{pod.name}") from error
    body: bytes = await raw.read()
    return body


@dataclass(frozen=True, slots=True)
class DeploymentScale:
    """A Deployment's replica count as its `scale` subresource says, and what is ready."""

    name: str
    replicas: int  # spec.replicas
    resource_version: str  # of the Deployment: a guarded scale write fails if it moved


@dataclass(frozen=True, slots=True)
class DeploymentReplicas:
    """What a Deployment asks for and what runs, from its status."""

    desired: int  # spec.replicas
    ready: int  # status.readyReplicas
    updated: int  # status.updatedReplicas: pods of the current template
    # status.observedGeneration has caught up with metadata.generation: the counts above are
    # about the current spec (just after a scale write they may still be the old one's).
    observed: bool = True


class Deployments:
    """The Deployments behind the colours, in one namespace: scale, status, autoscalers.

    Replica counts change only through the `scale` subresource, which can change nothing else.
    """

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.apps = client.AppsV1Api(api)

    async def scale(self, name: str) -> DeploymentScale:
        """Read the Deployment's `scale` subresource."""
        what = f"reading deployments/{name}/scale in {self.namespace}"
        try:
            raw: Any = await self.apps.read_namespaced_deployment_scale(
                name, self.namespace, _preload_content=False
            )
        except ApiException as error:
            raise _translate(error, what) from error
        body = await _json(raw, what)
        return DeploymentScale(
            name,
            int((body.get("spec") or {}).get("replicas") or 0),
            str((body.get("metadata") or {}).get("resourceVersion", "")),
        )

    async def set_replicas(self, name: str, replicas: int, resource_version: str = "") -> int:
        """Merge-patch the `scale` subresource's replicas (guarded when a version is given)."""
        what = f"scaling deployments/{name} in {self.namespace} to {replicas}"
        body: dict[str, Any] = {"spec": {"replicas": replicas}}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            raw: Any = await self.apps.patch_namespaced_deployment_scale(
                name,
                self.namespace,
                body,
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]  # accepted, not in the stubs
                _preload_content=False,
            )
        except ApiException as error:
            raise _translate(error, what) from error
        written = await _json(raw, what)
        return int((written.get("spec") or {}).get("replicas") or 0)

    async def replicas(self, name: str) -> DeploymentReplicas:
        """Read the Deployment's desired, ready and updated replicas."""
        what = f"reading deployments/{name} in {self.namespace}"
        try:
            raw: Any = await self.apps.read_namespaced_deployment(
                name, self.namespace, _preload_content=False
            )
        except ApiException as error:
            raise _translate(error, what) from error
        body = await _json(raw, what)
        status = body.get("status") or {}
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        return DeploymentReplicas(
            int((body.get("spec") or {}).get("replicas") or 0),
            int(status.get("readyReplicas") or 0),
            int(status.get("updatedReplicas") or 0),
            int(status.get("observedGeneration") or 0) >= generation,
        )

    async def autoscalers_of(self, name: str) -> list[str]:
        """Names of the HorizontalPodAutoscalers whose target is this Deployment."""
        what = f"listing horizontalpodautoscalers in {self.namespace}"
        autoscaling = client.AutoscalingV1Api(self.api)
        try:
            raw: Any = await autoscaling.list_namespaced_horizontal_pod_autoscaler(
                self.namespace, _preload_content=False
            )
        except ApiException as error:
            raise _translate(error, what) from error
        listing = await _json(raw, what)
        names = []
        for item in listing.get("items") or []:
            target = (item.get("spec") or {}).get("scaleTargetRef") or {}
            if target.get("kind") == "Deployment" and target.get("name") == name:
                names.append(str((item.get("metadata") or {}).get("name", "")))
        return sorted(names)

    async def allowed(self, verb: str, resource: str, name: str = "") -> bool:
        """Whether this identity may `verb` a resource (`deployments/scale`...) in the namespace.

        Asked with a SelfSubjectAccessReview, which every authenticated user may create.
        """
        group_resource, _, subresource = resource.partition("/")
        group = "autoscaling" if group_resource == "horizontalpodautoscalers" else "apps"
        attributes: dict[str, Any] = {
            "namespace": self.namespace,
            "verb": verb,
            "group": group,
            "resource": group_resource,
        }
        if subresource:
            attributes["subresource"] = subresource
        if name:
            attributes["name"] = name
        body: Any = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        what = f"asking whether this identity may {verb} {resource} {name}".rstrip()
        try:
            raw: Any = await client.AuthorizationV1Api(self.api).create_self_subject_access_review(
                body, _preload_content=False
            )
        except ApiException as error:
            raise _translate(error, what) from error
        review = await _json(raw, what)
        return bool((review.get("status") or {}).get("allowed"))
