"""Leader election over a coordination.k8s.io/v1 Lease, with kubernetes_asyncio's elector.

Only the replica holding the Lease makes preflight and rollback decisions; every replica follows
the ConfigMap. Losing the Lease stops decisions at once: `leading` turns false before anything
else happens. A replica that shuts down gives the Lease up (`release`, like client-go's
ReleaseOnCancel), so another replica takes over within one retry period instead of waiting for
the Lease to expire: a rolling update of bluegreen leaves no time in which nobody decides.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from dataclasses import dataclass

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.leaderelection import electionconfig
from kubernetes_asyncio.leaderelection.leaderelection import LeaderElection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
# A shutdown waits at most this long for the release; past it the Lease simply expires.
RELEASE_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Timing of the election, in whole seconds (the Lease stores integer seconds).

    client-go's defaults: 15, 10 and 2.
    """

    duration: int = 15
    renew_deadline: int = 10
    retry_period: int = 2


def identity() -> str:
    """Name this replica: the pod name (HOSTNAME in Kubernetes), made unique per process."""
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    return f"{host}-{uuid.uuid4().hex[:6]}"


class Leadership:
    """Campaigns for the Lease for as long as the process runs."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        settings: LeaseSettings | None = None,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.settings = settings or LeaseSettings()
        self.identity = identity()
        self.leading = False
        self._leading_task: asyncio.Task[object] | None = None

    async def run(self) -> None:
        """Campaign, lead until the Lease is lost, then campaign again; forever."""
        settings = self.settings
        while True:
            lock = LeaseLock(self.name, self.namespace, self.identity, self.api)
            config = electionconfig.Config(
                lock,
                lease_duration=settings.duration,
                renew_deadline=settings.renew_deadline,
                retry_period=settings.retry_period,
                onstarted_leading=self._lead,
                onstopped_leading=self._stopped,
            )
            try:
                await LeaderElection(config).run()
            except asyncio.CancelledError:
                # The elector does not stop the task it started for `_lead` when cancelled.
                if self._leading_task is not None:
                    self._leading_task.cancel()
                raise
            except Exception as error:
                self.leading = False
                log.warning("leader election failed, retrying error=%r", str(error))
            await asyncio.sleep(settings.retry_period)

    async def release(self) -> bool:
        """Give up the Lease if this replica holds it; True when it was released.

        Call after the election task is cancelled, so nothing renews it again. The write is
        guarded by the resourceVersion read, so a Lease another replica took meanwhile is left
        alone. An empty holder is what client-go writes too: candidates take such a Lease at
        their next retry rather than after the Lease duration.
        """
        self.leading = False
        leases = client.CoordinationV1Api(self.api)
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                lease = await leases.read_namespaced_lease(self.name, self.namespace)
                if lease.spec is None or lease.spec.holder_identity != self.identity:
                    return False
                await leases.patch_namespaced_lease(  # type: ignore[call-arg]  # _content_type: accepted, not in the stubs
                    self.name,
                    self.namespace,
                    {
                        "metadata": {"resourceVersion": lease.metadata.resource_version},
                        "spec": {"holderIdentity": "", "leaseDurationSeconds": 1},
                    },
                    _content_type=MERGE_PATCH,
                )
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as error:
            # It then expires as it would without a release: a slower hand-over, no harm.
            log.warning(
                "could not release the lease lease=%s/%s error=%r",
                self.namespace,
                self.name,
                str(error),
            )
            return False
        log.info(
            "released the lease lease=%s/%s identity=%s", self.namespace, self.name, self.identity
        )
        return True

    async def _lead(self) -> None:
        self._leading_task = asyncio.current_task()
        self.leading = True
        log.info("leading lease=%s/%s identity=%s", self.namespace, self.name, self.identity)
        try:
            await asyncio.Event().wait()  # until the elector cancels this on losing the Lease
        finally:
            self.leading = False

    async def _stopped(self) -> None:
        self.leading = False
        log.warning(
            "lost the lease lease=%s/%s identity=%s", self.namespace, self.name, self.identity
        )
