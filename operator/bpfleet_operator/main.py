"""`bpfleet-operator`: runs the kopf operator for EbpfPrograms in every namespace."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

import kopf

from bpfleet_api import logs
from bpfleet_operator import metrics


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
    parser.add_argument("--log-level", default=os.environ.get("BPFLEET_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    logs.setup(args.log_level)
    logging.getLogger("kopf.objects").addFilter(_QuietWatchers())
    from bpfleet_operator import handlers  # noqa: F401  (registers the handlers)

    metrics.serve(args.metrics_address)

    asyncio.run(kopf.operator(clusterwide=True, standalone=True, liveness_endpoint=args.liveness))


if __name__ == "__main__":
    main()
