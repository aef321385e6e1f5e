import hashlib
import io
import json
from datetime import datetime, timezone

import pytest
from prometheus_client import generate_latest
from sqlalchemy.exc import IntegrityError, OperationalError

from crm_service.domain.model import ApprovalRequest
from deploy.demo_users import DEMO_USERS, ensure_demo_users
from infra.content_store import ContentStore, FileTooLarge
from infra.metrics import LagReport
from infra.retrying import CONFLICT_ATTEMPTS, rerun_on_conflict
from infra.tokens import hash_token, is_weak_secret, new_token
from tests.support.metrics import samples

NOW = datetime.now(timezone.utc)


def test_crm_applies_only_newer_approval_revisions():
    request = ApprovalRequest(id="r", deal_id="d", document_id="doc", organization_id="o", requested_by="u",
                              requested_at=NOW)
    assert request.apply_status(status="in_progress", stage="legal", revision=1, reason=None,
                                registry_approval_id="a", at=NOW)
    assert request.apply_status(status="approved", stage=None, revision=3, reason=None,
                                registry_approval_id="a", at=NOW)
    # A late or replayed update never moves the status backwards.
    assert not request.apply_status(status="in_progress", stage="finance", revision=2, reason=None,
                                    registry_approval_id="a", at=NOW)
    assert (request.status, request.revision) == ("approved", 3)


def test_content_store_names_files_by_their_hash(tmp_path):
    store = ContentStore(tmp_path)
    data = b"contract text" * 1000
    sha, size = store.put(io.BytesIO(data), max_bytes=10**6)
    assert sha == hashlib.sha256(data).hexdigest() and size == len(data)
    assert store.path_for(sha).read_bytes() == data
    assert store.put(io.BytesIO(data), max_bytes=10**6) == (sha, size)
    with pytest.raises(FileTooLarge):
        store.put(io.BytesIO(data), max_bytes=100)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".upload-")]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "0" * 63])
def test_content_store_refuses_anything_but_a_digest_as_a_name(tmp_path, bad):
    with pytest.raises(ValueError):
        ContentStore(tmp_path).path_for(bad)


def test_tokens_are_hashed_and_weak_ones_spotted():
    token = new_token()
    assert hash_token(token) != token and len(hash_token(token)) == 64
    assert is_weak_secret(None) and is_weak_secret("short") and is_weak_secret("demo" * 10)
    assert not is_weak_secret(token)


def test_demo_users_cover_every_role_and_keep_their_tokens(tmp_path):
    path = tmp_path / "demo-users.json"
    first = ensure_demo_users(path)
    roles = {u["role"] for u in first}
    assert {"sales", "legal", "finance", "director", "steward", "auditor", "admin", "integration"} <= roles
    assert all(set(u) == {"name", "role", "service", "token"} for u in json.loads(path.read_text()))
    assert ensure_demo_users(path) == first and len(first) == len(DEMO_USERS)


def test_crm_keeps_the_newest_registry_link_whatever_order_updates_arrive_in():
    from crm_service.domain.model import Organization

    org = Organization(id="o", name="n", created_by="u", created_at=NOW)
    assert org.apply_registry_link(registry_id="survivor", status="linked", name="ПАО", seq=9)  # the merge
    assert not org.apply_registry_link(registry_id="duplicate", status="pending_verification", name="n", seq=4)
    assert (org.registry_id, org.registry_status, org.registry_seq) == ("survivor", "linked", 9)
    assert org.apply_registry_link(registry_id="survivor", status="linked", name="ПАО (renamed)", seq=None)
    assert org.registry_seq == 9


def test_text_that_no_database_can_store_is_recognised_but_valid_pairs_pass():
    import json

    from infra.web import _LONE_SURROGATE

    assert not _LONE_SURROGATE.search(json.dumps({"a": "\U0001F600 ООО «Ромашка»"}).encode())
    assert _LONE_SURROGATE.search(b'{"a": "\\ud8ce x"}') and _LONE_SURROGATE.search(b'{"a": "\\udf2c"}')


def test_a_reconciliation_run_analyses_its_tables_at_doubling_counts():
    from ecm_service.service_layer.reconciliation import statistics_due

    due = [done for done in range(0, 20_000, 500) if statistics_due(done, done + 500)]
    assert due == [500, 1500, 3500, 7500, 15500]  # the batches that pass 1k, 2k, 4k, 8k, 16k
    assert not statistics_due(0, 999) and statistics_due(0, 5000) and not statistics_due(4000, 4000)


def test_a_started_process_freezes_its_objects_and_collects_less_often():
    import gc

    from infra.runtime import settle_garbage_collector

    before = gc.get_threshold()
    try:
        frozen = settle_garbage_collector(5_000)
        # A frozen object that dies meanwhile leaves the permanent generation (on a test
        # worker, execnet's thread frees some), so the count can only have dropped a little.
        assert frozen > 0 and 0.9 * frozen <= gc.get_freeze_count() <= frozen
        assert gc.get_threshold() == (5_000, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_the_http_middlewares_name_each_request_and_refuse_unstorable_text_only():
    import httpx
    from fastapi import FastAPI, Request

    from infra.web import CORRELATION_HEADER, CorrelationIdMiddleware, RejectUnstorableText

    app = FastAPI()
    app.add_middleware(RejectUnstorableText)
    app.add_middleware(CorrelationIdMiddleware, service="test")

    @app.post("/echo")
    async def echo(request: Request):
        return {"body": (await request.body()).decode(), "correlation_id": request.state.correlation_id}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        sent = await client.post("/echo", json={"name": "Вектор"}, headers={CORRELATION_HEADER: "c-42"})
        assert sent.status_code == 200 and sent.headers[CORRELATION_HEADER] == "c-42"
        assert sent.json() == {"body": '{"name":"Вектор"}', "correlation_id": "c-42"}  # the body read is passed on
        made = await client.post("/echo", json={}, headers={CORRELATION_HEADER: "x" * 129})  # too long: a new one
        assert made.headers[CORRELATION_HEADER] == made.json()["correlation_id"] != "x" * 129
        lone = await client.post("/echo", content=b'{"name": "\\ud800"}', headers={"content-type": "application/json"})
        assert lone.status_code == 422 and "surrogate" in lone.text and lone.headers[CORRELATION_HEADER]
        pair = await client.post("/echo", content=b'{"name": "\\ud83d\\ude00"}',
                                 headers={"content-type": "application/json"})
        assert pair.status_code == 200 and pair.json()["body"] == '{"name": "\\ud83d\\ude00"}'


def test_a_row_of_an_entity_is_asdict_without_sharing_anything_mutable():
    from dataclasses import asdict, dataclass, field
    from decimal import Decimal

    from infra.table_repository import fresh, row_of

    @dataclass
    class Inner:
        code: str
        tags: list = field(default_factory=list)

    @dataclass
    class Entity:
        id: str
        at: datetime
        amount: Decimal
        addresses: list
        extra: dict
        inner: Inner | None = None

    item = Entity(id="e1", at=datetime.now(timezone.utc), amount=Decimal("1.50"),
                  addresses=[{"kind": "legal", "text": "Moscow"}], extra={"a": [1, 2]}, inner=Inner("c", ["t"]))
    row = row_of(item)
    assert row == asdict(item)
    assert row["at"] is item.at  # immutable: shared, not copied
    item.addresses[0]["text"] = "Kazan"  # the entity changes after the row was taken
    item.extra["a"].append(3)
    item.inner.tags.append("u")
    assert row["addresses"] == [{"kind": "legal", "text": "Moscow"}] and row["extra"] == {"a": [1, 2]}
    assert row["inner"] == {"code": "c", "tags": ["t"]}

    copy = fresh(row)
    copy["addresses"].append({"kind": "postal"})
    assert copy == {**row, "addresses": [{"kind": "legal", "text": "Moscow"}, {"kind": "postal"}]}
    assert row["addresses"] == [{"kind": "legal", "text": "Moscow"}]


@pytest.mark.parametrize("service", ["crm", "ecm"])
def test_every_foreign_key_column_leads_an_index(service):
    """A lookup by a foreign key (an open request of a document, the approvals waiting
    for a counterparty) or a change of its parent otherwise reads the whole table; the
    missing index on approval_requests.document_id made every approval request do that."""
    import importlib

    from sqlalchemy import ForeignKeyConstraint

    metadata = importlib.import_module(f"{service}_service.adapters.tables").metadata
    unindexed = []
    for table in metadata.sorted_tables:
        leading = {index.columns.values()[0].name for index in table.indexes}
        leading |= {list(c.columns)[0].name for c in table.constraints
                    if not isinstance(c, ForeignKeyConstraint) and len(c.columns)}
        unindexed += [f"{table.name}.{fk.parent.name}" for fk in table.foreign_keys if fk.parent.name not in leading]
    assert unindexed == []


def lag_series(consumer: str) -> dict[tuple[str, str], float]:
    return {(s.labels["topic"], s.labels["partition"]): s.value
            for s in samples(generate_latest().decode(), "bridge_consumer_lag") if s.labels["consumer"] == consumer}


def test_a_consumer_stops_reporting_lag_of_partitions_it_no_longer_holds():
    report = LagReport("unit-lag")
    report.set("crm.events", 0, 7)
    report.set("crm.events", 1, 3)
    report.set("ecm.events", 1, 0)
    assert lag_series("unit-lag") == {("crm.events", "0"): 7, ("crm.events", "1"): 3, ("ecm.events", "1"): 0}
    report.keep_only({("crm.events", 1), ("ecm.events", 1), ("ecm.events", 2)})  # a rebalance took crm.events:0
    assert lag_series("unit-lag") == {("crm.events", "1"): 3, ("ecm.events", "1"): 0}
    report.keep_only(set())  # no partitions left, no series left; a second call has nothing to remove
    report.keep_only(set())
    assert lag_series("unit-lag") == {}
    report.set("crm.events", 0, 2)  # given back later: reported again
    assert lag_series("unit-lag") == {("crm.events", "0"): 2}


async def test_stopping_jobs_asks_each_to_end_and_cancels_one_that_does_not_in_time():
    import asyncio

    from infra.runtime import StoppableJobs

    jobs, ended = StoppableJobs(), []

    async def polite(stop: asyncio.Event):
        while not stop.is_set():
            await asyncio.sleep(0.001)
        ended.append("polite")

    async def deaf(stop: asyncio.Event):
        await asyncio.sleep(60)

    polite_task, deaf_task = jobs.spawn(polite), jobs.spawn(deaf)
    assert await jobs.stop(timeout=0.2) == 2
    assert ended == ["polite"] and polite_task.done() and not polite_task.cancelled()
    assert deaf_task.cancelled()
    assert await jobs.stop() == 0  # finished jobs leave the registry


def test_jobs_left_pending_by_a_closed_loop_are_forgotten_not_awaited():
    """Tests run each in a loop of their own: a job a closed loop left behind must not be
    counted, or awaited from another loop, by a later stop."""
    import asyncio

    from infra.runtime import StoppableJobs

    jobs = StoppableJobs()

    async def forever(stop: asyncio.Event):
        await asyncio.sleep(3600)

    async def start():
        return jobs.spawn(forever)

    old = asyncio.new_event_loop()
    left = old.run_until_complete(start())
    old.close()
    assert asyncio.run(jobs.stop(timeout=0.1)) == 0 and not jobs._jobs
    left._log_destroy_pending = False  # pending on purpose: no "Task was destroyed" at exit


@pytest.mark.parametrize("codes, message", [
    ({}, "at least one code"),
    ({"workload": ""}, "no empty label"),
    ({"workload": "Workload", "x" * 65: "Too long for the column"}, "1 to 64 characters"),
    ({"Ожидание документов": "Not a code"}, "'Ожидание документов'"),
])
def test_delay_reason_codes_that_could_not_be_stored_stop_the_ecm_at_start(tmp_path, codes, message):
    from ecm_service.bootstrap import load_delay_reasons

    path = tmp_path / "delay_reasons.json"
    path.write_text(json.dumps(codes, ensure_ascii=False))
    with pytest.raises(ValueError, match=message):
        load_delay_reasons(path)


def test_the_shipped_delay_reasons_load():
    from pathlib import Path

    from ecm_service.bootstrap import load_delay_reasons

    assert "other" in load_delay_reasons(Path("ecm_service/delay_reasons.json"))


async def test_a_use_case_that_lost_a_race_runs_again_and_nothing_else_is_rerun():
    """rerun_on_conflict: an IntegrityError (another call committed the same key first) or
    a deadlock PostgreSQL broke by rolling this transaction back runs the use case again,
    up to CONFLICT_ATTEMPTS calls in all, then lets it through; any other error, a
    database error of another kind included, goes out at once."""
    calls = []

    class PgError(Exception):
        def __init__(self, sqlstate):
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    @rerun_on_conflict
    async def lost_twice(outcome):
        calls.append(outcome)
        if outcome == "refused":
            raise ValueError("not a conflict")
        if outcome == "timeout":
            raise OperationalError("SELECT", {}, PgError("57014"))  # query_canceled
        if outcome == "deadlock" and len(calls) <= 2:
            raise OperationalError("SELECT … FOR UPDATE", {}, PgError("40P01"))
        if outcome == "always" or (outcome == "wins" and len(calls) <= 2):
            raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))
        return len(calls)

    assert await lost_twice("wins") == 3
    calls.clear()
    assert await lost_twice("deadlock") == 3
    calls.clear()
    with pytest.raises(OperationalError):
        await lost_twice("timeout")
    assert calls == ["timeout"]
    calls.clear()
    with pytest.raises(IntegrityError):
        await lost_twice("always")
    assert len(calls) == CONFLICT_ATTEMPTS
    calls.clear()
    with pytest.raises(ValueError):
        await lost_twice("refused")
    assert calls == ["refused"]


def test_what_counts_as_the_database_being_away():
    """503 with Retry-After for an outage (infra.service_app), a 500 for everything else."""
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from infra.outages import database_unavailable

    class Orig(Exception):
        def __init__(self, sqlstate):
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    def error(sqlstate=None, invalidated=False):
        return DBAPIError("SELECT 1", {}, Orig(sqlstate), connection_invalidated=invalidated)

    away = [ConnectionRefusedError(), ConnectionResetError(), TimeoutError(), PoolTimeout("pool"),
            error(invalidated=True), error("57P03"), error("57P01"), error("08006"), error("53300")]
    not_away = [error("23505"), error("40P01"), error("42P01"), error(None), ValueError("x")]
    assert [database_unavailable(e) for e in away] == [True] * len(away)
    assert [database_unavailable(e) for e in not_away] == [False] * len(not_away)


def test_an_error_is_logged_and_dead_lettered_without_the_values_it_failed_on():
    from pydantic import BaseModel, ValidationError

    from infra.dead_letters import build_dead_letter, error_context
    from infra.logs import error_text

    class Contact(BaseModel):
        name: str
        phone: int

    try:
        Contact(name=["Иван Петров"], phone="+7 900 123-45-67")
    except ValidationError as exc:
        invalid = exc
    assert "+7 900" in str(invalid)  # what pydantic's own text would have put in a log
    assert error_text(invalid) == "name: Input should be a valid string; phone: Input should be a valid integer, " \
                                  "unable to parse string as an integer"
    letter = build_dead_letter(source_topic="t", partition=0, offset=1, key=None, value=b"{}", headers=[],
                               error=invalid, attempts=3, consumer="c")
    assert "Иван" not in error_context(letter.headers)["error.message"]
    assert error_text(ConnectionRefusedError(111, "Connect call failed")) == "[Errno 111] Connect call failed"


async def test_a_database_error_never_carries_the_values_of_its_statement(tmp_path):
    """A failing statement's text went into logs with its parameters (uvicorn's traceback
    of a 500, the consumers' and jobs' warnings): a contact's name and phone among them."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from infra.db import make_engine

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/crm.db")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE contacts (name TEXT, phone TEXT UNIQUE)"))
            insert = text("INSERT INTO contacts (name, phone) VALUES (:name, :phone)")
            await conn.execute(insert, {"name": "Иван Петров", "phone": "+7 900 123-45-67"})
            with pytest.raises(IntegrityError) as failed:
                await conn.execute(insert, {"name": "Иван Петров", "phone": "+7 900 123-45-67"})
    finally:
        await engine.dispose()
    message = str(failed.value)
    assert "INSERT INTO contacts" in message and "UNIQUE" in message  # what failed, and why
    assert "+7 900" not in message and "Иван" not in message
    postgresql = make_engine("postgresql+asyncpg://postgres@127.0.0.1:5432/none")  # not connected
    assert postgresql.sync_engine.hide_parameters
    await postgresql.dispose()


def test_a_csv_download_has_the_columns_in_order_a_bom_and_inert_text():
    """One helper makes every CSV download of the ECM (delay reasons, the register of
    originals out): the columns named, in that order, a key a record lacks left empty,
    UTF-8 with a BOM for Excel, text that looks like a formula made inert."""
    import csv as csv_module

    from infra.web import csv_download

    answer = csv_download([{"b": "=SUM(A1)", "a": 1, "extra": "x"}, {"a": "+7 900"}], ["a", "b"], "report.csv")
    assert answer.media_type == "text/csv; charset=utf-8"
    assert answer.headers["content-disposition"] == 'attachment; filename="report.csv"'
    assert answer.body.startswith(b"\xef\xbb\xbf")
    rows = list(csv_module.reader(io.StringIO(answer.body.decode("utf-8-sig"))))
    assert rows == [["a", "b"], ["1", "'=SUM(A1)"], ["'+7 900", ""]]
