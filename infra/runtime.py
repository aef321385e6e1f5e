"""Background work a service runs next to its HTTP API: the outbox relay and the
command consumer, and the jobs its requests start. Started and stopped by the app's
lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Awaitable, Callable

import structlog
from aiokafka import AIOKafkaProducer

from infra.kafka import ensure_topics
from schemas.topics import provisioning

log = structlog.get_logger()


async def start_producer(producer: AIOKafkaProducer, bootstrap: str, partitions: int, timeout: float = 60.0,
                         replication: int = 1) -> None:
    """The topics, then the producer, tried every second until the broker answers
    (`broker_unreachable` warnings meanwhile; the service serves its users all along, see
    infra.service_app._start_messaging). `timeout` bounds one try at the topics."""
    while True:
        try:
            await ensure_topics(bootstrap, provisioning(partitions), timeout=timeout, replication_factor=replication)
            await producer.start()
            return
        except Exception as exc:
            log.warning("broker_unreachable", error=str(exc), error_class=type(exc).__name__)
            await asyncio.sleep(1.0)


def settle_garbage_collector(gen0_threshold: int) -> int:
    """Once a process has started (modules imported, app and pools built): what exists now
    moves to the collector's permanent generation, so full collections stop walking it
    again and again, and the youngest generation is collected every `gen0_threshold`
    allocations instead of 700. A 100,000-row import's apply spent 1.8 s of 5.5 s in the
    collector before, 0.3 s after (docs/adr/0009). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(gen0_threshold, older, oldest)
    return gc.get_freeze_count()


class BackgroundTasks:
    def __init__(self):
        self._tasks: list[asyncio.Task] = []

    def spawn(self, name: str, coro) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._report)
        self._tasks.append(task)

    @staticmethod
    def _report(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_died", task=task.get_name(), error=repr(task.exception()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# How long a service's stop waits for its imports and bulk loads to end after their chunk
# in hand; the orchestrators' grace periods (deploy/) are longer than this.
JOBS_STOP_SECONDS = 30.0


class StoppableJobs:
    """Work a request starts in the background (a CRM import, an ECM bulk load). Each job
    gets an event asking it to end at its next safe point (after the chunk in hand) and
    say where it stopped; the service's stop sets them all and waits for them."""

    def __init__(self):
        self._jobs: dict[asyncio.Task, asyncio.Event] = {}

    def spawn(self, job: Callable[[asyncio.Event], Awaitable]) -> asyncio.Task:
        stop = asyncio.Event()
        task = asyncio.create_task(job(stop))
        self._jobs[task] = stop
        task.add_done_callback(lambda done: self._jobs.pop(done, None))
        return task

    async def stop(self, timeout: float = JOBS_STOP_SECONDS) -> int:
        """Asks every running job to stop and waits up to `timeout`; one still running then
        is cancelled (its stale rule tells the rest). Returns how many were running."""
        loop = asyncio.get_running_loop()  # a test's loop closed under a job leaves it here, pending
        jobs = {task: stop for task, stop in self._jobs.items() if task.get_loop() is loop}
        for task in [task for task in self._jobs if task.get_loop().is_closed()]:
            del self._jobs[task]
        for stop in jobs.values():
            stop.set()
        if jobs:
            _, late = await asyncio.wait(jobs, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5.0)
        return len(jobs)


# The jobs this process's requests started; the app's lifespan stops them first.
REQUEST_JOBS = StoppableJobs()
