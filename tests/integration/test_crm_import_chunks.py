"""The spreadsheet import's machinery on both backends: rows read in a process of their
own, small chunks (several in the database at once on PostgreSQL), the dry run's kept
rows read by the apply, COPY on PostgreSQL, and what a failing chunk leaves behind."""

import asyncio
import csv
import uuid
from datetime import datetime, timezone

import pytest
from openpyxl import Workbook
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select

from crm_service.adapters import tables
from crm_service.service_layer import imports
from infra.db import insert_rows, make_engine, make_session_factory, one_of

HEADER = ["Наименование", "ИНН", "КПП", "Телефон", "Контактное лицо"]


@pytest.fixture
async def sessions(backend, databases):
    engine = make_engine(databases.url("crm", backend))
    yield make_session_factory(engine)
    await engine.dispose()


async def _new_import(sessions, path, mapping) -> str:
    import_id = str(uuid.uuid4())
    async with sessions() as session, session.begin():
        await session.execute(tables.imports.insert().values(
            id=import_id, file_name=path.name, file_path=str(path), created_by="u1", header=HEADER,
            mapping=mapping, status="uploaded", counts={}, created_at=datetime.now(timezone.utc)))
    return import_id


def _xlsx(path, rows):
    book = Workbook()
    for row in [HEADER, *rows]:
        book.active.append(row)
    book.save(path)


def _report(path):
    with open(path, encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


async def _count(sessions, table):
    async with sessions() as session:
        return await session.scalar(select(func.count()).select_from(table))


async def test_a_file_of_many_small_chunks_keeps_file_order_repeats_and_the_kept_rows(sessions, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(imports, "CHUNK", 4)  # 23 rows: six chunks, two at a time on PostgreSQL
    rows = [[f"ООО «Клиент {i}»", str(7700000000 + i), "770101001", f"+7 900 {i}", ""] for i in range(20)]
    rows[5][4] = "Анна Иванова"
    rows.insert(9, ["ООО «Клиент 2» (повтор)", "7700000002", "770101001", "", ""])  # repeat across chunks
    rows.insert(14, ["", "7736050003", "", "", ""])  # no name
    rows.insert(17, ["ООО «Клиент 19» снова", "7700000019", "770101001", "", ""])  # the first of two: kept
    path = tmp_path / "orgs.xlsx"
    _xlsx(path, rows)
    mapping = imports.suggest_mapping(HEADER)
    import_id = await _new_import(sessions, path, mapping)
    dry_report = tmp_path / f"{import_id}.dry-run.csv"

    dry = await imports.run_import(sessions, import_id=import_id, path=path, mapping=mapping, user_id="u1",
                                   apply=False, report_path=dry_report)
    assert dry == {"create": 20, "update": 0, "unchanged": 0, "possible_duplicate": 0, "duplicate_in_file": 2,
                   "error": 1}
    lines = _report(dry_report)
    assert [int(line["row"]) for line in lines] == list(range(2, 25))  # file order, whatever finished first
    assert {line["row"]: line["outcome"] for line in lines if line["outcome"] != "create"} == {
        "11": "duplicate_in_file", "16": "error", "24": "duplicate_in_file"}
    assert await _count(sessions, tables.organizations) == 0
    kept = imports.parsed_rows_path(dry_report, import_id)
    assert kept.exists() and not kept.with_name(kept.name + ".part").exists()

    path.unlink()  # the apply reads the dry run's rows, not the file
    applied = await imports.run_import(sessions, import_id=import_id, path=path, mapping=mapping, user_id="u1",
                                       apply=True, report_path=tmp_path / f"{import_id}.apply.csv")
    assert applied == dry
    assert not kept.exists()
    assert await _count(sessions, tables.organizations) == 20
    assert await _count(sessions, tables.import_keys) == 20
    assert await _count(sessions, tables.organization_history) == 20
    assert await _count(sessions, tables.contacts) == 1
    async with sessions() as session:
        org = (await session.execute(select(tables.organizations).where(
            tables.organizations.c.inn == "7700000005"))).mappings().one()
        job = (await session.execute(select(tables.imports).where(tables.imports.c.id == import_id))).mappings().one()
    assert org["phones"] == ["+7 900 5"] and org["emails"] == [] and org["registry_ids"] == {}
    assert org["name_key"] == "клиент" and org["name_norm"] == "клиент 5" and org["created_at"].tzinfo is not None
    assert job["status"] == "applied" and job["rows_done"] == 23 and job["counts"] == dry


async def test_a_failing_chunk_fails_the_import_without_counting_or_reporting_its_rows(sessions, tmp_path,
                                                                                        monkeypatch):
    monkeypatch.setattr(imports, "CHUNK", 5)
    path = tmp_path / "orgs.xlsx"
    _xlsx(path, [[f"Альфа {i}", "", "", "", ""] for i in range(14)])
    mapping = imports.suggest_mapping(HEADER)
    import_id = await _new_import(sessions, path, mapping)
    await imports.run_import(sessions, import_id=import_id, path=path, mapping=mapping, user_id="u1",
                             apply=False, report_path=tmp_path / "dry.csv")

    real_insert = imports.insert_rows

    async def insert_failing_second_chunk(session, table, rows):
        # By content, not by call order: two chunks are in the database at once on
        # PostgreSQL, and the second may reach its insert first.
        if table is tables.organizations and any(row["name"] == "Альфа 5" for row in rows):
            raise RuntimeError("disk full")
        await real_insert(session, table, rows)

    monkeypatch.setattr(imports, "insert_rows", insert_failing_second_chunk)
    report = tmp_path / "apply.csv"
    with pytest.raises(RuntimeError, match="disk full"):
        await imports.run_import(sessions, import_id=import_id, path=path, mapping=mapping, user_id="u1",
                                 apply=True, report_path=report)
    async with sessions() as session:
        job = (await session.execute(select(tables.imports).where(tables.imports.c.id == import_id))).mappings().one()
    organizations = await _count(sessions, tables.organizations)
    assert job["status"] == "failed" and "disk full" in job["error"]
    # The first chunk was written and reported; the failed one is neither counted nor in the
    # report; a third one already under way (PostgreSQL) may have been written or not.
    assert job["counts"]["create"] == len(_report(report)) == job["rows_done"] == 5
    assert organizations in (5, 9)  # the third chunk holds the last 4 rows


async def test_a_dry_run_cut_short_leaves_no_rows_for_an_apply(sessions, tmp_path, monkeypatch):
    monkeypatch.setattr(imports, "CHUNK", 2)
    path = tmp_path / "orgs.xlsx"
    _xlsx(path, [[f"Бета {i}", "", "", "", ""] for i in range(6)])
    mapping = imports.suggest_mapping(HEADER)
    import_id = await _new_import(sessions, path, mapping)

    async def failing_store(*args, **kwargs):
        raise ConnectionError("database went away")

    monkeypatch.setattr(imports, "_store", failing_store)
    report = tmp_path / f"{import_id}.dry-run.csv"
    with pytest.raises(ConnectionError):
        await imports.run_import(sessions, import_id=import_id, path=path, mapping=mapping, user_id="u1",
                                 apply=False, report_path=report)
    kept = imports.parsed_rows_path(report, import_id)
    assert not kept.exists() and not kept.with_name(kept.name + ".part").exists()


async def test_an_unreadable_file_fails_the_job_with_the_reason(sessions, tmp_path):
    path = tmp_path / "broken.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a workbook")
    mapping = {"0": "name"}
    import_id = await _new_import(sessions, path, mapping)
    with pytest.raises(imports.UnreadableFile):
        await imports.run_import(sessions, import_id=import_id, path=path, mapping=mapping, user_id="u1",
                                 apply=False, report_path=tmp_path / "dry.csv")
    async with sessions() as session:
        job = (await session.execute(select(tables.imports).where(tables.imports.c.id == import_id))).mappings().one()
    assert job["status"] == "failed" and "not a readable XLSX file" in job["error"]


async def test_insert_rows_writes_json_timestamps_and_server_defaults(sessions):
    now = datetime.now(timezone.utc)
    org = dict(id=str(uuid.uuid4()), name="Гамма", created_by="u1", created_at=now, phones=["+7 1"],
               emails=[], addresses=[{"kind": "legal", "text": "Тверь"}], notes=None)
    async with sessions() as session, session.begin():
        await insert_rows(session, tables.organizations, [org])
        await insert_rows(session, tables.organization_history, [
            dict(organization_id=org["id"], at=now, kind="imported", actor_id="u1", detail={"fields": ["name"]}),
            dict(organization_id=org["id"], at=now, kind="imported", actor_id="u1", detail={})])
        await insert_rows(session, tables.import_keys, [])  # nothing to do
    async with sessions() as session:
        row = (await session.execute(select(tables.organizations))).mappings().one()
        history = (await session.execute(select(tables.organization_history)
                                          .order_by(tables.organization_history.c.id))).mappings().all()
    assert row["phones"] == ["+7 1"] and row["emails"] == [] and row["registry_ids"] == {}
    assert row["addresses"] == [{"kind": "legal", "text": "Тверь"}] and row["created_at"] == now
    assert [h["detail"] for h in history] == [{"fields": ["name"]}, {}]
    assert history[0]["id"] < history[1]["id"]


async def test_insert_rows_refuses_to_skip_a_python_side_default(sessions, backend):
    table = Table("with_default", MetaData(), Column("id", Integer, primary_key=True),
                  Column("kind", String(10), default="plain"))
    async with sessions() as session, session.begin():
        await (await session.connection()).run_sync(table.metadata.create_all)
    async with sessions() as session, session.begin():
        if backend == "postgresql":  # COPY would leave `kind` empty
            with pytest.raises(ValueError, match="give kind"):
                await insert_rows(session, table, [{"id": 1}])
        else:  # an INSERT applies the default
            await insert_rows(session, table, [{"id": 1}])
            assert await session.scalar(select(table.c.kind)) == "plain"


async def test_one_of_finds_exactly_the_listed_keys(sessions):
    k = tables.import_keys
    async with sessions() as session, session.begin():
        await insert_rows(session, k, [dict(key=f"inn:{n}:", organization_id=f"org-{n}") for n in range(5)])
    async with sessions() as session:
        dialect = session.bind.dialect
        found = await session.scalars(select(k.c.organization_id).where(
            one_of(k.c.key, ["inn:1:", "inn:3:", "inn:9:"], dialect)).order_by(k.c.key))
        assert list(found) == ["org-1", "org-3"]
        assert list(await session.scalars(select(k.c.key).where(one_of(k.c.key, [], dialect)))) == []


async def test_a_stopped_run_is_taken_for_stopped_and_a_new_run_owns_the_job(sessions, tmp_path):
    """A CRM process that stops mid-import (a deploy's restart) leaves its job running with
    no progress: after `stale_after` it reads as failed and may be started again; a run
    that has been taken over cannot write to the job any more."""
    from datetime import timedelta

    from crm_service.service_layer import import_jobs

    path = tmp_path / "orgs.xlsx"
    _xlsx(path, [[f"ООО «Стоп {i}»", "", "", "", ""] for i in range(30)])
    import_id = await _new_import(sessions, path, imports.suggest_mapping(HEADER))
    old = datetime.now(timezone.utc) - timedelta(seconds=300)
    async with sessions() as session, session.begin():
        await session.execute(tables.imports.update().where(tables.imports.c.id == import_id).values(
            status="dry_running", run_id="run-gone", progress_at=old, rows_done=7))

    assert (await import_jobs.get_import(sessions, import_id, stale_after=600))["status"] == "dry_running"
    assert (await import_jobs.get_import(sessions, import_id))["status"] == "dry_running"  # no rule, no change
    job = await import_jobs.get_import(sessions, import_id, stale_after=120)
    assert job["status"] == "failed" and job["error"].startswith("interrupted") and job["run_id"] is None

    # A run another one has taken over stops at its first progress write, leaving the job alone.
    async with sessions() as session, session.begin():
        await session.execute(tables.imports.update().where(tables.imports.c.id == import_id).values(
            status="dry_running", run_id="run-new", rows_done=0))
    with pytest.raises(imports.RunTakenOver):
        await imports.run_import(sessions, import_id=import_id, path=path, mapping=imports.suggest_mapping(HEADER),
                                 user_id="u1", apply=False, report_path=tmp_path / "old.csv", run_id="run-gone")
    async with sessions() as session:
        row = (await session.execute(select(tables.imports).where(tables.imports.c.id == import_id))).mappings().one()
    assert (row["status"], row["run_id"], row["rows_done"]) == ("dry_running", "run-new", 0)
    assert not imports.parsed_rows_path(tmp_path / "old.csv", import_id).exists()  # nothing kept for an apply
    # The owner's run goes through.
    counts = await imports.run_import(sessions, import_id=import_id, path=path,
                                      mapping=imports.suggest_mapping(HEADER), user_id="u1", apply=False,
                                      report_path=tmp_path / "new.csv", run_id="run-new")
    assert counts["create"] == 30
    job = await import_jobs.get_import(sessions, import_id, stale_after=120)
    assert (job["status"], job["rows_done"]) == ("dry_run", 30) and job["progress_at"] is not None


async def test_a_mapping_sent_as_the_dry_run_starts_is_refused_and_the_run_keeps_its_own(sessions, tmp_path,
                                                                                          monkeypatch):
    """A new mapping whose request read the job just before another request started the
    dry run: the mapping is refused with a 409, and the running dry run keeps its status
    and the mapping it started with. It used to be written over the running job, which
    went back to `uploaded` under a mapping its run had not used."""
    from crm_service.service_layer import import_jobs

    path = tmp_path / "orgs.xlsx"
    _xlsx(path, [["ООО «Карта»", "", "", "", ""]])
    started_with = imports.suggest_mapping(HEADER)
    import_id = await _new_import(sessions, path, started_with)
    read = import_jobs.get_import

    async def read_then_another_request_starts_the_run(*args, **kwargs):
        job = await read(*args, **kwargs)
        async with sessions() as session, session.begin():
            await session.execute(tables.imports.update().where(tables.imports.c.id == import_id)
                                  .values(status="dry_running", run_id="run-1"))
        return job

    monkeypatch.setattr(import_jobs, "get_import", read_then_another_request_starts_the_run)
    with pytest.raises(import_jobs.ImportRefused) as refused:
        await import_jobs.set_mapping(sessions, import_id, {"0": "name", "1": "inn"})
    assert refused.value.status == 409 and "started meanwhile" in str(refused.value)
    job = await read(sessions, import_id)
    assert (job["status"], job["mapping"]) == ("dry_running", started_with)


class _StopAfter(asyncio.Event):
    """A stop that comes after `reads` chunks have been read (the service's stop, in time)."""

    def __init__(self, reads: int):
        super().__init__()
        self.reads = reads

    def is_set(self) -> bool:
        self.reads -= 1
        return self.reads < 0


async def test_an_apply_running_when_its_service_stops_says_so_at_once(sessions, tmp_path, monkeypatch):
    """A deploy's restart stops the CRM while an import is applied: it used to read
    `applying` until the stale rule caught it. Now the chunks in flight finish, none is
    read after, and the job reads failed, interrupted after the rows it got through, each
    of them in its report and in the CRM."""
    monkeypatch.setattr(imports, "CHUNK", 4)
    path = tmp_path / "orgs.xlsx"
    _xlsx(path, [[f"ООО «Рестарт {i}»", "", "", "", ""] for i in range(30)])
    mapping = imports.suggest_mapping(HEADER)
    import_id = await _new_import(sessions, path, mapping)
    dry_report = tmp_path / "dry.csv"
    await imports.run_import(sessions, import_id=import_id, path=path, mapping=mapping, user_id="u1",
                             apply=False, report_path=dry_report)
    report = tmp_path / "apply.csv"
    counts = await imports.run_import(sessions, import_id=import_id, path=path, mapping=mapping, user_id="u1",
                                      apply=True, report_path=report, stop=_StopAfter(2))
    assert counts["create"] == 8
    async with sessions() as session:
        job = (await session.execute(select(tables.imports).where(tables.imports.c.id == import_id))).mappings().one()
    assert (job["status"], job["rows_done"]) == ("failed", 8), dict(job)
    assert job["error"] == "interrupted: the CRM service stopped after 8 rows; run the dry run again"
    assert len(_report(report)) == 8 and await _count(sessions, tables.organizations) == 8
    assert not imports.parsed_rows_path(dry_report, import_id).exists()  # a new dry run comes first


async def test_cells_longer_than_their_columns_are_cut_and_the_import_goes_through(sessions, tmp_path):
    # The contact person's name had no cut: on PostgreSQL one such cell failed the apply's
    # chunk, and the whole import (SQLite stores any length, so only one backend showed it).
    rows = [["ООО «Длинный контакт»", "", "", "", "Я" * 900], ["ООО «Обычная»", "", "", "", "Анна"]]
    path = tmp_path / "orgs.xlsx"
    _xlsx(path, rows)
    mapping = imports.suggest_mapping(HEADER)
    import_id = await _new_import(sessions, path, mapping)
    for apply in (False, True):
        counts = await imports.run_import(sessions, import_id=import_id, path=path, mapping=mapping, user_id="u1",
                                          apply=apply, report_path=tmp_path / f"{apply}.csv")
        assert counts["create"] == 2 and counts["error"] == 0, counts
    async with sessions() as session:
        names = sorted(await session.scalars(select(tables.contacts.c.full_name)), key=len)
    assert names == ["Анна", "Я" * 300]
