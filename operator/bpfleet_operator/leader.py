"""Leader election on a coordination.k8s.io Lease, so that several operator replicas can run for HA.

Only the holder of the Lease reconciles; the others wait and take over when it stops renewing. This
follows client-go's leader election: the holder renews well within the lease duration, a candidate
takes a lease whose renew time is older than its duration, and a leader that cannot renew in time
exits (its replacement may already be leading) instead of reconciling alongside another.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes.client import CoordinationV1Api, V1Lease, V1LeaseSpec, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class LeaseLock:
    api: CoordinationV1Api
    namespace: str
    name: str
    identity: str
    lease_seconds: int = 15

    def holder(self) -> str | None:
        try:
            return self.api.read_namespaced_lease(self.name, self.namespace).spec.holder_identity
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def try_acquire_or_renew(self) -> bool:
        """True when this candidate holds the lease afterwards."""
        now = _now()
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            return self._create(now)
        spec = lease.spec or V1LeaseSpec()
        held_by_other = spec.holder_identity not in (None, "", self.identity)
        expired = (
            spec.renew_time is None
            or spec.renew_time + datetime.timedelta(seconds=spec.lease_duration_seconds or self.lease_seconds)
            < now
        )
        if held_by_other and not expired:
            return False
        if spec.holder_identity != self.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity, spec.renew_time, spec.lease_duration_seconds = (
            self.identity,
            now,
            self.lease_seconds,
        )
        lease.spec = spec
        try:
            # Carries the resourceVersion read above: two candidates cannot both win the same lease.
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    def _create(self, now: datetime.datetime) -> bool:
        lease = V1Lease(
            metadata=V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=self.lease_seconds,
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            ),
        )
        try:
            self.api.create_namespaced_lease(self.namespace, lease)
        except ApiException as e:
            if e.status == 409:
                return False  # another candidate created it first
            raise
        return True

    def release(self) -> None:
        """Gives the lease up at once, so that a standby takes over without waiting for it to expire."""
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity, lease.spec.renew_time = None, None
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as e:
            log.warning("could not release the leader lease", extra={"error": str(e.reason)})


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{os.uname().nodename}-{os.getpid()}"


class Elector:
    """Blocks until leading, then renews in the background; calls `on_lost` if renewal fails."""

    def __init__(self, lock: LeaseLock, on_lost: Callable[[], None]) -> None:
        self.lock, self.on_lost = lock, on_lost
        self.retry = max(lock.lease_seconds / 5, 0.2)
        self._stop = threading.Event()

    def acquire(self) -> None:
        announced = False
        while not self._try():
            if not announced:
                log.info(
                    "waiting to become the leader",
                    extra={"lease": f"{self.lock.namespace}/{self.lock.name}", "holder": self._holder()},
                )
                announced = True
            time.sleep(self.retry)
        log.info(
            "became the leader",
            extra={"lease": f"{self.lock.namespace}/{self.lock.name}", "id": self.lock.identity},
        )
        threading.Thread(target=self._renew, name="leader lease", daemon=True).start()

    def _try(self) -> bool:
        try:
            return self.lock.try_acquire_or_renew()
        except Exception as e:  # the API server unreachable: keep trying
            log.warning("leader election attempt failed", extra={"error": str(e)})
            return False

    def _holder(self) -> str | None:
        try:
            return self.lock.holder()
        except Exception:
            return None

    def _renew(self) -> None:
        last_renewal = time.monotonic()
        while not self._stop.wait(self.retry):
            if self._try():
                last_renewal = time.monotonic()
            elif time.monotonic() - last_renewal > self.lock.lease_seconds * 2 / 3:
                # Someone else may lead by now: stop before reconciling alongside it.
                log.error("lost the leader lease", extra={"lease": f"{self.lock.namespace}/{self.lock.name}"})
                self.on_lost()
                return

    def stop(self) -> None:
        self._stop.set()
        self.lock.release()
