"""Bulk load on both backends: row-level outcomes, duplicates within the file and
against the registry, and re-runs that update instead of duplicating."""

import asyncio
import csv
from datetime import datetime, timezone

from sqlalchemy import func, select

from ecm_service.adapters import tables
from ecm_service.adapters.history import verify_chain
from ecm_service.adapters.row_sources import read_rows
from ecm_service.service_layer import bulk_load, steward
from ecm_service.service_layer.bulk_load import BulkLoader
from infra.users import User
from tests.support.meanwhile import start_meanwhile

HEADER = "Код;Наименование;ИНН;КПП;ОГРН\n"
ROWS = [
    "1;ООО «Ромашка»;7736050003;773601001;1027700070518",   # clean
    "2;Лютик;7707083894;;",                                  # bad INN check digit: flagged, still loaded
    "3;;7707083893;773601001;",                              # no name
    "1;Повтор кода;;;",                                      # code repeated
    "4;Ромашка (дубль);7736050003;773601001;1027700070518",  # same INN+KPP as row 2 of the file
    "5;Сбер из 1С;7707083893;773601001;1027700132195",       # already in the registry, verified
]


async def _seed_verified(ecm):
    now = datetime.now(timezone.utc)
    async with ecm.session_factory() as session, session.begin():
        await session.execute(tables.counterparties.insert().values(
            id="sber", name='ПАО "Сбербанк России"', status="verified", inn="7707083893", kpp="773601001",
            ogrn="1027700132195", country="RU", quality_flags=[], created_at=now, updated_at=now))


async def _load(ecm, tmp_path, lines, name="export.csv"):
    path = tmp_path / name
    path.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    report = tmp_path / f"{name}.report.csv"
    loader = BulkLoader(ecm.session_factory, system="1c", actor="test", verify_clean=True, chunk_size=2)
    result = await loader.run(read_rows(path), report)
    with open(report, encoding="utf-8") as handle:
        return result, {row["row"]: row for row in csv.DictReader(handle)}


async def _count(ecm, table):
    async with ecm.session_factory() as session:
        return await session.scalar(select(func.count()).select_from(table))


async def test_every_row_gets_an_outcome_and_nothing_is_duplicated(ecm, tmp_path):
    await _seed_verified(ecm)
    result, report = await _load(ecm, tmp_path, ROWS)
    outcomes = {row: r["outcome"] for row, r in report.items()}
    assert outcomes == {"2": "created", "3": "created", "4": "error", "5": "duplicate_in_file",
                        "6": "duplicate_in_file", "7": "linked_existing"}
    assert report["4"]["message"] == "name is required"
    assert report["5"]["message"] == "code already on row 2"
    assert report["6"]["message"] == "same INN and KPP as row 2"
    assert report["7"]["counterparty_id"] == "sber"
    assert "inn_invalid" in report["3"]["quality_flags"]
    assert result.rows == 6 and result.counts["created"] == 2

    async with ecm.session_factory() as session:
        statuses = dict((await session.execute(select(tables.counterparties.c.name,
                                                      tables.counterparties.c.status))).all())
    assert statuses["ООО «Ромашка»"] == "verified"  # clean row, verify_clean asked for
    assert statuses["Лютик"] == "pending_verification"  # flagged rows wait for the steward
    assert await _count(ecm, tables.counterparties) == 3

    # The same file again: found by code, nothing new.
    _, again = await _load(ecm, tmp_path, ROWS, name="again.csv")
    assert [again[row]["outcome"] for row in ("2", "3", "7")] == ["unchanged", "unchanged", "differs"]
    assert again["7"]["message"] == "the verified record differs in name; left for the steward"
    assert await _count(ecm, tables.counterparties) == 3

    # A corrected file updates the record it names.
    _, fixed = await _load(ecm, tmp_path, [ROWS[0], "2;Лютик;7707083893;773601001;1027700132195"], "fixed.csv")
    assert fixed["3"]["outcome"] == "updated" and fixed["2"]["outcome"] == "unchanged"
    async with ecm.session_factory() as session:
        assert (await verify_chain(session)).intact
        refs = await session.scalar(select(func.count()).select_from(tables.external_refs)
                                    .where(tables.external_refs.c.system == "1c"))
    assert refs == 3


async def test_a_load_whose_process_stopped_reads_as_interrupted_and_loading_again_duplicates_nothing(
        ecm, tmp_path):
    """The ECM process running a load stops between chunks (a deploy's restart): the load
    stayed `running` for good. After `stale_after` with no progress it reads as failed,
    interrupted, with the rows it got through; a progressing load is left alone; the file
    loaded again finds the rows already in and creates only the rest."""
    from datetime import timedelta

    from ecm_service.service_layer.bulk_load import get_job, run_job, start_job

    sessions = ecm.session_factory
    path = tmp_path / "export.csv"
    path.write_text(HEADER + "\n".join(ROWS[:2]) + "\n", encoding="utf-8")
    gone = await start_job(sessions, file_name="export.csv", system="1c", user_id="steward")
    # Its first chunk went in, then its process stopped five minutes ago.
    await BulkLoader(sessions, system="1c", actor="test", verify_clean=False).run(
        read_rows(path), tmp_path / "first.csv")
    quiet = datetime.now(timezone.utc) - timedelta(seconds=300)
    async with sessions() as session, session.begin():
        await session.execute(tables.bulk_loads.update().where(tables.bulk_loads.c.id == gone).values(
            rows_done=2, progress_at=quiet))

    assert (await get_job(sessions, gone))["status"] == "running"  # no rule, no change
    assert (await get_job(sessions, gone, stale_after=600))["status"] == "running"
    job = await get_job(sessions, gone, stale_after=120)
    assert job["status"] == "failed" and job["finished_at"] is not None
    assert job["error"].startswith("interrupted: no progress for over 120 s after 2 rows")
    assert (await get_job(sessions, gone, stale_after=120))["error"] == job["error"]  # read again: the same
    assert await get_job(sessions, "missing", stale_after=120) is None

    # A load that writes progress stays running whatever the rule; the whole file loaded
    # again creates only the rows the interrupted load did not reach.
    path.write_text(HEADER + "\n".join(ROWS) + "\n", encoding="utf-8")
    again = await start_job(sessions, file_name="export.csv", system="1c", user_id="steward")
    assert (await get_job(sessions, again, stale_after=0.5))["status"] == "running"
    result = await run_job(sessions, load_id=again, path=path, kind="csv", system="1c", actor="test",
                           verify_clean=False, report_path=tmp_path / "again.csv")
    assert (result.counts["unchanged"], result.counts["created"]) == (2, 1)  # row 7, the one new code
    done = await get_job(sessions, again, stale_after=0.001)
    assert (done["status"], done["rows_done"], done["error"]) == ("done", 6, None)
    assert done["progress_at"] is not None
    assert await _count(ecm, tables.counterparties) == 3


async def test_a_load_running_when_its_service_stops_says_so_at_once(ecm, tmp_path):
    """A deploy's restart stops the ECM gracefully while a load runs: the load used to
    read `running` until the stale rule caught it minutes later. Now the service's stop
    ends it after the chunk in hand and it records itself failed, interrupted, with the
    rows it committed, each of them in its report; the file loaded again creates only the
    rest."""
    import asyncio

    from ecm_service.service_layer.bulk_load import get_job, run_job, spawn_job, start_job
    from infra.runtime import REQUEST_JOBS

    sessions = ecm.session_factory
    path = tmp_path / "export.csv"
    path.write_text(HEADER + "".join(f"{n};Организация {n};;;\n" for n in range(1, 401)), encoding="utf-8")
    load_id = await start_job(sessions, file_name="export.csv", system="1c", user_id="steward")
    task = spawn_job(sessions, load_id=load_id, path=path, kind="csv", system="1c", actor="test",
                     verify_clean=False, report_path=tmp_path / "report.csv", chunk_size=2)
    while (await get_job(sessions, load_id))["rows_done"] < 4:
        await asyncio.sleep(0.005)
    assert await REQUEST_JOBS.stop() == 1 and task.done() and not task.cancelled()
    assert await REQUEST_JOBS.stop() == 0  # nothing left running in this process

    job = await get_job(sessions, load_id)
    assert job["status"] == "failed" and job["finished_at"] is not None, job
    assert 4 <= job["rows_done"] < 400
    assert job["error"].startswith(f"interrupted: the ECM service stopped after {job['rows_done']} rows; load the "
                                   "file again"), job["error"]
    with open(job["report_path"], encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == job["rows_done"]
    assert await _count(ecm, tables.counterparties) == job["rows_done"]

    again = await start_job(sessions, file_name="export.csv", system="1c", user_id="steward")
    result = await run_job(sessions, load_id=again, path=path, kind="csv", system="1c", actor="test",
                           verify_clean=False, report_path=tmp_path / "again.csv")
    assert (result.counts["unchanged"], result.counts["created"]) == (job["rows_done"], 400 - job["rows_done"])
    assert await _count(ecm, tables.counterparties) == 400


async def test_a_value_longer_than_the_registry_holds_is_a_row_error_not_a_failed_load(ecm, tmp_path):
    # On PostgreSQL one such value failed the chunk's insert, and with it the whole load
    # (SQLite stores any length, so only one backend showed it).
    rows = ["1;" + "Я" * 501 + ";;;",                                  # name over 500
            "2;Лютик;7707083893/773601001 и ещё что-то;;",              # an INN cell holding more
            "3" * 65 + ";Длинный код;;;",                               # code over 64
            "4;" + "Я" * 500 + ";;;",                                  # exactly 500: fits
            "5;Нормальная;;;"]
    result, report = await _load(ecm, tmp_path, rows)
    assert {row: r["outcome"] for row, r in report.items()} == {
        "2": "error", "3": "error", "4": "error", "5": "created", "6": "created"}
    assert report["2"]["message"] == "longer than the registry holds, in characters: name (501 > 500)"
    assert report["3"]["message"].endswith("inn (29 > 20)")  # counted without its spaces
    assert report["4"]["message"].endswith(": code (65 > 64)")
    assert result.counts == {"error": 3, "created": 2}
    assert await _count(ecm, tables.counterparties) == 2


async def test_a_nul_in_a_json_lines_export_is_dropped_not_a_failed_load(ecm, tmp_path):
    # JSON can carry "\u0000"; PostgreSQL's text cannot hold it, and one such value failed
    # the chunk's insert and with it the whole load. Cells lose it when they are cleaned.
    import json

    path = tmp_path / "export.jsonl"
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in (
        {"code": "N1", "name": "ООО «Ноль\u0000»", "inn": "7707083893\u0000"},
        {"code": "N2", "name": "Лютик"})), encoding="utf-8")
    result = await BulkLoader(ecm.session_factory, system="1c", actor="test", verify_clean=False).run(
        read_rows(path), tmp_path / "report.csv")
    assert result.counts == {"created": 2}
    async with ecm.session_factory() as session:
        names = set(await session.scalars(select(tables.counterparties.c.name)))
    assert names == {"ООО «Ноль»", "Лютик"}


async def test_a_record_verified_as_a_reload_changes_it_is_updated_before_the_verification(
        ecm, tmp_path, monkeypatch):
    """A reload changes a pending record while the steward verifies it. The load read the
    record as pending and wrote the file's values over it after the verification had
    committed: verified data changed by no steward's hand, its name keys marked pending
    again (PostgreSQL; this test failed there). Here the steward verifies after the load
    has read the chunk and before it writes, given a second: the records the file
    changes are now read again under a lock, the verification waits for the chunk, and
    the history has the update before the verification."""
    async def load(name: str, lines: list[str]):
        path = tmp_path / name
        path.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
        loader = BulkLoader(ecm.session_factory, system="1c", actor="test", verify_clean=False)
        return await loader.run(read_rows(path), tmp_path / f"{name}.report.csv")

    await load("first.csv", ["1;ООО «Ромашка»;7736050003;773601001;1027700070518"])
    async with ecm.session_factory() as session:
        record_id = await session.scalar(select(tables.external_refs.c.entity_id).where(
            tables.external_refs.c.external_id == "1"))
    # Held at the new record's keys: after the chunk's reads, before its update.
    verifications = start_meanwhile(monkeypatch, bulk_load, "write_name_keys", lambda: steward.verify(
        ecm.uow(), counterparty_id=record_id, user=User(id="s", name="steward", role="steward"),
        reason="checked in EGRUL", correlation_id="c"))
    result = await load("reload.csv", ["1;ООО «Ромашка Плюс»;7736050003;773601001;1027700070518", "2;Лютик;;;"])
    await asyncio.gather(*verifications)
    async with ecm.uow() as uow:
        actions = [h["action"] for h in await uow.history.of("counterparty", record_id)]
        record = await uow.counterparties.get(record_id)
    assert result.counts["updated"] == 1 and record.status == "verified"
    assert actions == ["bulk_created", "bulk_updated", "verified"]
