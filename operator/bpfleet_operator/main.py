"""`bpfleet-operator`: runs the kopf operator for EbpfPrograms in every namespace."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

import kopf
from kubernetes.client import CoordinationV1Api

from bpfleet_api import logs
from bpfleet_api.kube_client import api_client
from bpfleet_operator import metrics
from bpfleet_operator.leader import Elector, LeaseLock, default_identity

LEASE_NAME = "bpfleet-operator"


class _QuietWatchers(logging.Filter):
    """Drops kopf's line per handled watch event: one per Node and ConfigMap change is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("Handler '") and message.endswith(("_event' succeeded.", "resync' succeeded."))
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bpfleet-operator", description=__doc__)
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument(
        "--liveness", default=os.environ.get("BPFLEET_LIVENESS"), help="e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument(
        "--metrics-address",
        default=os.environ.get("BPFLEET_METRICS_ADDRESS", metrics.DEFAULT_ADDRESS),
        help="host:port of /metrics; empty disables (env BPFLEET_METRICS_ADDRESS)",
    )
    parser.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("BPFLEET_LEADER_ELECT", "").lower() in ("1", "true", "yes"),
        help="reconcile only while holding the Lease bpfleet-operator (env BPFLEET_LEADER_ELECT)",
    )
    parser.add_argument(
        "--leader-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="namespace of the leader Lease (env POD_NAMESPACE)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("BPFLEET_WORKERS") or 4),
        help="programs reconciled at once, and node states written at once (env BPFLEET_WORKERS)",
    )
    parser.add_argument("--log-level", default=os.environ.get("BPFLEET_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    os.environ["BPFLEET_WORKERS"] = str(args.workers)  # read by the handlers when they start
    logs.setup(args.log_level)
    logging.getLogger("kopf.objects").addFilter(_QuietWatchers())
    from bpfleet_operator import handlers  # noqa: F401  (registers the handlers)

    metrics.serve(args.metrics_address)

    elector = None
    if args.leader_elect:
        lock = LeaseLock(
            CoordinationV1Api(api_client()), args.leader_namespace, LEASE_NAME, default_identity()
        )
        # Losing the lease means another replica may lead already: exit at once, to come back as standby.
        elector = Elector(lock, on_lost=lambda: os._exit(1))
        elector.acquire()
    try:
        asyncio.run(kopf.operator(clusterwide=True, standalone=True, liveness_endpoint=args.liveness))
    finally:
        if elector is not None:
            elector.stop()


if __name__ == "__main__":
    main()
