"""Leader election over a coordination.k8s.io/v1 Lease, with kubernetes_asyncio's elector.

Only the replica holding the Lease makes preflight and rollback decisions; every replica follows
the ConfigMap. Losing the Lease stops decisions at once: `leading` turns false before anything
else happens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from dataclasses import dataclass

from kubernetes_asyncio import client
from kubernetes_asyncio.leaderelection import electionconfig
from kubernetes_asyncio.leaderelection.leaderelection import LeaderElection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger(__name__)


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
            except Exception as error:
                self.leading = False
                log.warning("leader election failed, retrying error=%r", str(error))
            await asyncio.sleep(settings.retry_period)

    async def _lead(self) -> None:
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
