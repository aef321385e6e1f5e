"""`python -m sync_bridge`: provision topics, then run the faust worker."""

import asyncio
import logging

import faust

from infra.kafka import ensure_topics
from infra.logs import configure_logging
from infra.runtime import settle_garbage_collector
from schemas.topics import provisioning
from sync_bridge import web  # noqa: F401  (registers the pages)
from sync_bridge.agents import crm_to_ecm, ecm_to_crm  # noqa: F401  (registers the agents)
from sync_bridge.app import app, settings


def main() -> None:
    handler = configure_logging("bridge", json_logs=settings.json_logs, level=settings.log_level)
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, provisioning(settings.topic_partitions),
                              replication_factor=settings.topic_replication))
    worker = make_worker(handler)
    settle_garbage_collector(settings.gc_gen0_threshold)
    worker.execute_from_commandline()


def make_worker(handler: logging.Handler | None = None) -> faust.Worker:
    # Started programmatically (not through faust's CLI) so that stdout is not redirected
    # into faust's logger: our structured logs stay one JSON object per line. faust sets
    # up logging again as its worker starts (plain text by default): the root logger gets
    # our handler back, so faust's and aiokafka's records are JSON lines too.
    worker = faust.Worker(app, loglevel="WARN", redirect_stdouts=False, quiet=True,
                          logging_config={"version": 1, "disable_existing_loggers": False,
                                          "root": {"level": "WARNING", "handlers": []}})
    worker.loghandlers = [handler] if handler is not None else []  # faust takes app.conf's otherwise
    # faust always makes a terminal spinner, and with one it sets the root logger to DEBUG
    # (the spinner turns on every record, faust-streaming/faust#495): every debug call in
    # aiokafka and httpcore then builds a record no handler wants, about a tenth of the
    # bridge's CPU under load (bench/RESULTS.md). No spinner: the root stays at WARN.
    worker.spinner = None
    return worker


if __name__ == "__main__":
    main()
