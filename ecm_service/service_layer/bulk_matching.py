"""Match-or-propose for a bulk run (the initial sync's dry run) on worker processes.

Matching is Python work (weights, scoring, evidence) that the GIL keeps on one core.
On the 2-core machine, 100,000 organizations against 1,000,000 counterparties take 151 s
in the service's process and 128 s on two workers, measured in the same hour
(bench/RESULTS.md).

Each worker is a spawned process with its own engine and event loop, opened once and
kept; it only reads. A batch is cut into one slice per worker and the slices are matched
at once. The workers start on the first bulk batch, not with the service, and end with
it, also when it is killed (they watch their parent)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import structlog

from ecm_service.domain import matching
from ecm_service.domain.matching import Decision, Incoming, Thresholds

log = structlog.get_logger()

_worker: dict = {}  # in a worker process: its event loop and session factory


def _exit_with_parent(parent: int) -> None:
    """A killed service cannot shut its pool down; its workers would wait forever."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _start_worker(database_url: str, thresholds: Thresholds) -> None:
    from infra.db import make_engine, make_session_factory

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="exit-with-parent", daemon=True).start()
    matching.configure(thresholds)
    _worker["loop"] = asyncio.new_event_loop()
    _worker["sessions"] = make_session_factory(make_engine(database_url))


def _match_slice(items: list[Incoming], prefetch: int) -> list[Decision]:
    from ecm_service.service_layer.registry import match_many
    from ecm_service.service_layer.unit_of_work import EcmUnitOfWork

    async def run() -> list[Decision]:
        async with EcmUnitOfWork(_worker["sessions"]) as uow:
            return await match_many(uow, items, prefetch=prefetch)

    return _worker["loop"].run_until_complete(run())


def slices(items: list, parts: int) -> list[list]:
    """`items` cut into at most `parts` consecutive slices of (nearly) equal size."""
    size = -(-len(items) // parts) or 1
    return [items[i:i + size] for i in range(0, len(items), size)]


class MatchWorkers:
    """A pool of `workers` matching processes on `database_url`."""

    def __init__(self, database_url: str, workers: int):
        self.database_url = database_url
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                initargs=(self.database_url, matching.THRESHOLDS))
            log.info("match_workers_started", workers=self.workers)
        return self._pool

    async def match(self, items: list[Incoming], *, prefetch: int) -> list[Decision]:
        loop = asyncio.get_running_loop()
        try:
            done = await asyncio.gather(*(loop.run_in_executor(self._executor(), _match_slice, s, prefetch)
                                          for s in slices(items, self.workers)))
        except BrokenProcessPool:  # a worker died (killed, out of memory): start afresh next time
            self.close()
            raise
        return [decision for part in done for decision in part]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


_workers: MatchWorkers | None = None


def configure(workers: MatchWorkers | None) -> None:
    """Set once at start (bootstrap); None keeps bulk matching in the calling process."""
    global _workers
    if _workers is not None and _workers is not workers:
        _workers.close()
    _workers = workers


def configured() -> MatchWorkers | None:
    return _workers
