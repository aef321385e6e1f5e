"""Reading a file in a process of its own. Parsing a spreadsheet is CPU work in Python
(openpyxl reads 100,000 rows in about 13 s): done in the service it stalls the event
loop and shares one core with the import's own work. `ProcessReader` runs a generator
function in a spawned process and hands its items to the event loop in lists, a few
lists ahead, so that reading and the work on what was read use both cores.

The generator must be a module-level function (it is pickled by name) and its items
picklable. An exception in it is raised again in the reader's user; a process that dies
(killed, out of memory) ends the iteration with `ReaderFailed`."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import pickle
import queue
from collections.abc import Callable, Iterable
from itertools import islice

import orjson

_DONE = "done"
_ITEMS = "items"
_ERROR = "error"


class ReaderFailed(RuntimeError):
    pass


def _produce(target: Callable[..., Iterable], args: tuple, size: int, out, gc_threshold: tuple) -> None:
    # Collect garbage as often as the parent does (a service raises the youngest
    # generation's threshold; openpyxl reads 100,000 rows in 7.5 s at 10,000, 9.9 s at 700).
    gc.set_threshold(*gc_threshold)
    try:
        items = iter(target(*args))
        while chunk := list(islice(items, size)):
            out.put((_ITEMS, chunk))
        out.put((_DONE, None))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the reader's user
        try:
            payload = pickle.dumps(exc)
            pickle.loads(payload)  # some exceptions pickle but cannot be rebuilt
        except Exception:  # an exception that cannot travel is sent as its class and text
            payload = pickle.dumps(ReaderFailed(f"{type(exc).__name__}: {exc}"))
        out.put((_ERROR, payload))


class ProcessReader:
    """`async with ProcessReader(fn, args) as reader: async for items in reader: ...`"""

    def __init__(self, target: Callable[..., Iterable], args: tuple = (), *, chunk: int = 1000, ahead: int = 4,
                 poll_seconds: float = 0.5):
        self._poll = poll_seconds
        context = multiprocessing.get_context("spawn")
        self._queue = context.Queue(maxsize=ahead)
        self._process = context.Process(target=_produce, args=(target, args, chunk, self._queue, gc.get_threshold()),
                                        name="process-reader", daemon=True)
        self._finished = False

    async def __aenter__(self) -> ProcessReader:
        self._process.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def __aiter__(self) -> ProcessReader:
        return self

    async def __anext__(self) -> list:
        if self._finished:
            raise StopAsyncIteration
        kind, payload = await self._next_message()
        if kind == _ITEMS:
            return payload
        self._finished = True
        if kind == _ERROR:
            raise pickle.loads(payload)
        raise StopAsyncIteration

    async def _next_message(self) -> tuple[str, object]:
        while True:
            try:
                return await asyncio.to_thread(self._queue.get, True, self._poll)
            except queue.Empty:
                if self._process.is_alive():
                    continue
            try:  # the process ended: whatever it sent before is still readable
                return self._queue.get(timeout=self._poll)
            except queue.Empty:
                self._finished = True
                raise ReaderFailed(f"the reading process ended without finishing "
                                   f"(exit code {self._process.exitcode})") from None

    async def close(self) -> None:
        """Stops the process if the reading was not finished (an error, a cancelled job)."""
        if self._process.is_alive() and not self._finished:
            self._process.terminate()
        await asyncio.to_thread(self._process.join, 10)
        self._queue.close()
        self._queue.cancel_join_thread()


class JsonLinesReader:
    """A file of JSON lines (a job's own cache) with `ProcessReader`'s interface, read in
    this process: orjson parses a prepared import row in about 2 µs, less than handing it
    over from another process costs (pickled there, unpickled here: 3 µs on top of the
    parsing). A line that does not parse raises `orjson.JSONDecodeError`."""

    def __init__(self, path, *, chunk: int = 1000):
        self._path, self._chunk = path, chunk
        self._file = None

    async def __aenter__(self) -> JsonLinesReader:
        self._file = open(self._path, "rb")  # noqa: SIM115 - closed by __aexit__
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._file.close()

    def __aiter__(self) -> JsonLinesReader:
        return self

    async def __anext__(self) -> list:
        lines = list(islice(self._file, self._chunk))
        if not lines:
            raise StopAsyncIteration
        return [orjson.loads(line) for line in lines]


def json_line(item) -> bytes:
    """One item as a line `JsonLinesReader` reads back."""
    return orjson.dumps(item) + b"\n"
