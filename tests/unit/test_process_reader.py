"""The reading process of imports: real spawned processes (the generators below are
pickled by name and run in them)."""

import gc
import os
import signal

import pytest

from infra.process_reader import JsonLinesReader, ProcessReader, ReaderFailed, json_line
from infra.spreadsheets import UnreadableFile


def numbers(count: int):
    yield from range(count)


def numbers_then_unreadable(count: int):
    yield from range(count)
    raise UnreadableFile("the CSV cannot be read past some row")


def numbers_then_killed(count: int):
    yield from range(count)
    os.kill(os.getpid(), signal.SIGKILL)
    yield -1  # never sent


class NeedsTwoArguments(Exception):
    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")  # pickles, but cannot be rebuilt from its args


def numbers_then_odd_exception(count: int):
    yield from range(count)
    raise NeedsTwoArguments(7, "odd")


def collector_threshold():
    yield gc.get_threshold()


def endless():
    n = 0
    while True:
        yield n
        n += 1


async def test_items_arrive_in_order_in_lists_of_the_chunk_size():
    async with ProcessReader(numbers, (2500,), chunk=1000) as reader:
        chunks = [items async for items in reader]
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert [n for c in chunks for n in c] == list(range(2500))


async def test_an_exception_in_the_reading_process_is_raised_after_what_was_read_before_it():
    got = []
    with pytest.raises(UnreadableFile, match="cannot be read past some row"):
        async with ProcessReader(numbers_then_unreadable, (150,), chunk=100) as reader:
            async for items in reader:
                got.extend(items)
    assert got == list(range(100))  # the last partial list is lost with the failure, never half-sent


async def test_a_killed_reading_process_ends_the_reading_with_an_error_not_a_hang():
    got = []
    with pytest.raises(ReaderFailed, match="exit code -9"):
        async with ProcessReader(numbers_then_killed, (300,), chunk=100, poll_seconds=0.2) as reader:
            async for items in reader:
                got.extend(items)
    # What the process had not yet handed over dies with it; what came is in order.
    assert got == list(range(len(got))) and len(got) <= 300


async def test_an_exception_that_cannot_travel_arrives_as_its_class_and_text():
    with pytest.raises(ReaderFailed, match="NeedsTwoArguments: 7: odd"):
        async with ProcessReader(numbers_then_odd_exception, (5,), chunk=10) as reader:
            async for _ in reader:
                pass


async def test_leaving_early_stops_the_process():
    reader = ProcessReader(endless, (), chunk=10, ahead=2)
    async with reader:
        async for items in reader:
            assert items == list(range(10))
            break
    assert not reader._process.is_alive()
    assert reader._process.exitcode == -signal.SIGTERM


async def test_json_lines_are_read_back_in_chunks(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [[2, True, {"name": "Альфа «Бета»"}, None], [3, False, {}, ["x"]], [4, True, {"n": 7700000001}, []]]
    path.write_bytes(b"".join(json_line(row) for row in rows))
    async with JsonLinesReader(path, chunk=2) as reader:
        assert [items async for items in reader] == [rows[:2], rows[2:]]
    assert reader._file.closed


async def test_a_damaged_json_line_raises(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(json_line([1]) + b"[2, \n")
    with pytest.raises(ValueError):
        async with JsonLinesReader(path) as reader:
            [items async for items in reader]


async def test_the_reading_process_collects_garbage_as_often_as_its_parent():
    before = gc.get_threshold()
    gc.set_threshold(12_345, before[1], before[2])
    try:
        async with ProcessReader(collector_threshold) as reader:
            assert [items async for items in reader] == [[(12_345, before[1], before[2])]]
    finally:
        gc.set_threshold(*before)
