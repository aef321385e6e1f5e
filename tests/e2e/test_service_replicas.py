"""Two replicas of each service, as deploy/k8s runs them: real processes sharing their
service's PostgreSQL database, directories and consumer group, with requests spread over
both. Every approval request is published once, handled once and reaches the CRM; both
ECM replicas apply commands; an import's steps may each reach a different replica, and
an import whose replica is killed mid-run (a deploy's restart) is started again on the
other, and a bulk load of the registry whose replica is killed reads as interrupted and is
loaded again without duplicates (an import or a load whose replica is stopped for a restart says so at once)."""

import asyncio
import csv
import io
import signal
import time

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from deploy.broker import free_port
from ecm_service.adapters import tables as ecm_tables
from schemas.topics import CRM_EVENTS
from tests.e2e.conftest import running_system
from tests.e2e.journey import SALES, create_deal_with_document, request_approval, wait_crm_status
from tests.e2e.test_reliability import ecm_counts, wait_drained
from tests.support.kafka import read_all
from tests.support.metrics import samples
from tests.support.polling import wait_until

STALE_SECONDS = 4  # CRM_IMPORT_STALE_SECONDS here: a stopped import is taken for stopped soon
# ECM_BULK_LOAD_STALE_SECONDS here: a load writes progress after each 5,000-row chunk (~1.5 s)
LOAD_STALE_SECONDS = 8


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    yield from running_system(tmp_path_factory, "postgresql",
                              extra_env={"CRM_IMPORT_STALE_SECONDS": str(STALE_SECONDS),
                                         "ECM_BULK_LOAD_STALE_SECONDS": str(LOAD_STALE_SECONDS)})


class Via:
    """The e2e Api, but calling the given replicas."""

    def __init__(self, api, crm_url: str, ecm_url: str):
        self._api, self._crm, self._ecm = api, crm_url, ecm_url

    def crm(self, user: str, method: str, path: str, **kwargs) -> httpx.Response:
        return self._api._call(self._crm, user, method, path, **kwargs)

    def ecm(self, user: str, method: str, path: str, **kwargs) -> httpx.Response:
        return self._api._call(self._ecm, user, method, path, **kwargs)


@pytest.fixture(scope="module")
def replicas(system, api):
    crm2 = system.start_replica("crm", "crm-2", free_port())
    ecm2 = system.start_replica("ecm", "ecm-2", free_port())
    for url in (crm2, ecm2):
        wait_until(lambda u=url: _ready(u), timeout=90, message=f"{url} ready")
    return [Via(api, system.crm_url, system.ecm_url), Via(api, crm2, ecm2)]


def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, delimiter=";").writerows([["Наименование", "ИНН"], *rows])
    return out.getvalue().encode()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def applied(url: str, consumer: str) -> float:
    page = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(s.value for s in samples(page, "bridge_messages_consumed_total")
               if s.labels["consumer"] == consumer and s.labels["outcome"] == "applied")


def test_approval_requests_spread_over_replicas_are_each_published_and_handled_once(api, system, replicas):
    flows = []
    for i in range(16):
        via = replicas[i % 2]
        flows.append(request_approval(via, create_deal_with_document(via, name=f"Replica {i}")))
    for i, flow in enumerate(flows):
        wait_crm_status(replicas[(i + 1) % 2], flow, "in_progress", "legal", timeout=90)  # read on the other one
    wait_drained(system)

    assert ecm_counts(api, flows) == [(1, 1, 1, 1)] * len(flows)
    # Both CRM relays published (each its own rows: FOR UPDATE SKIP LOCKED), none twice.
    requested = [r for r in asyncio.run(read_all(system.bootstrap_servers, CRM_EVENTS))
                 if dict(r.headers).get("type") == b"crm.approval_requested"]
    ids = [dict(r.headers)["event_id"] for r in requested]
    assert len(ids) == len(set(ids)) == len(flows)
    # Both ECM replicas applied commands: the consumer group split the partitions.
    ecm_urls = [system.ecm_url, replicas[1]._ecm]
    assert all(applied(url, "ecm-service") > 0 for url in ecm_urls), [applied(u, "ecm-service") for u in ecm_urls]
    crm_urls = [system.crm_url, replicas[1]._crm]
    assert sum(applied(url, "crm-service") for url in crm_urls) >= len(flows)


def _wait_import(via, import_id: str, status: str) -> dict:
    return wait_until(lambda: (lambda job: job if job["status"] in (status, "failed") else None)(
        via.crm(SALES, "GET", f"/api/imports/{import_id}").json()), timeout=60, message=f"import {status}")


def test_an_import_whose_steps_reach_different_replicas_completes(replicas):
    first, second = replicas
    data = _csv([["ООО «Северный ветер»", ""], ["Южный порт", ""]])
    up = second.crm(SALES, "POST", "/api/imports", files={"file": ("orgs.csv", data, "text/csv")})
    assert up.status_code == 201, up.text
    import_id = up.json()["id"]
    assert first.crm(SALES, "POST", f"/api/imports/{import_id}/dry-run").status_code == 202
    dry = _wait_import(second, import_id, "dry_run")
    assert dry["status"] == "dry_run" and dry["counts"]["create"] == 2, dry["counts"]
    assert second.crm(SALES, "POST", f"/api/imports/{import_id}/apply").status_code == 202
    done = _wait_import(first, import_id, "applied")
    assert done["status"] == "applied", done
    report = first.crm(SALES, "GET", done["report_url"])
    assert report.status_code == 200 and report.content.decode("utf-8-sig").count("create") == 2


def test_an_import_whose_replica_is_killed_mid_run_is_started_again_on_the_other(system, replicas):
    first, second = replicas
    rows = [[f"ООО «Рестарт {i}»", ""] for i in range(40_000)]  # a few seconds of dry run
    up = second.crm(SALES, "POST", "/api/imports", files={"file": ("big.csv", _csv(rows), "text/csv")})
    assert up.status_code == 201, up.text
    import_id = up.json()["id"]
    assert second.crm(SALES, "POST", f"/api/imports/{import_id}/dry-run").status_code == 202
    wait_until(lambda: first.crm(SALES, "GET", f"/api/imports/{import_id}").json()["rows_done"] > 0, timeout=60,
               interval=0.1, message="the dry run under way")
    system.kill("crm-2", signal.SIGKILL)  # the replica running it goes away mid-run
    stopped = first.crm(SALES, "GET", f"/api/imports/{import_id}").json()
    assert stopped["status"] == "dry_running" and 0 < stopped["rows_done"] < len(rows), stopped
    # Until it has been quiet for CRM_IMPORT_STALE_SECONDS it counts as running...
    assert first.crm(SALES, "POST", f"/api/imports/{import_id}/dry-run").status_code == 409
    time.sleep(STALE_SECONDS + 1)
    # ...then it reads as failed, interrupted, and the other replica runs it again to its end.
    failed = first.crm(SALES, "GET", f"/api/imports/{import_id}").json()
    assert failed["status"] == "failed" and failed["error"].startswith("interrupted"), failed
    assert first.crm(SALES, "POST", f"/api/imports/{import_id}/dry-run").status_code == 202
    dry = _wait_import(first, import_id, "dry_run")
    assert (dry["status"], dry["rows_done"], dry["counts"]["create"]) == ("dry_run", len(rows), len(rows)), dry


STEWARD = "steward-stas"


def _start_load(via, system: str, name: str) -> tuple[str, dict]:
    """A 20,000-row bulk load of `system` started on the replica `via`: (its URL, the upload)."""
    rows = "".join(f"{system.upper()}-{i};ООО «{name} {i:05d}»;;;\n" for i in range(20_000))
    files = {"file": ("export.csv", ("Код;Наименование;ИНН;КПП;ОГРН\n" + rows).encode(), "text/csv")}
    started = via.ecm(STEWARD, "POST", "/api/counterparties/bulk-loads", files=files, data={"system": system})
    assert started.status_code == 202, started.text
    return f"/api/counterparties/bulk-loads/{started.json()['id']}", files


def test_a_bulk_load_whose_replica_is_killed_reads_as_interrupted_and_loading_again_duplicates_nothing(
        system, replicas):
    # Runs after the tests that use ecm-2: it stops ecm-2 (the one after it starts replicas of its own).
    first, second = replicas
    url, files = _start_load(second, "rst", "Загрузка")
    def moving() -> dict | None:
        load = first.ecm(STEWARD, "GET", url).json()
        return load if load["rows_done"] > 0 or load["status"] != "running" else None

    under_way = wait_until(moving, timeout=60, interval=0.1, message="the load under way")
    assert under_way["status"] == "running", under_way["error"]
    system.kill("ecm-2", signal.SIGKILL)  # the replica running it goes away mid-load
    stopped = first.ecm(STEWARD, "GET", url).json()
    assert stopped["status"] == "running" and 0 < stopped["rows_done"] < 20_000, stopped
    time.sleep(LOAD_STALE_SECONDS + 1)
    failed = first.ecm(STEWARD, "GET", url).json()
    assert failed["status"] == "failed" and failed["error"].startswith("interrupted"), failed
    assert failed["report_url"] is None  # the report of a load cut short is not offered
    loaded = asyncio.run(registered(system, "rst"))
    assert loaded >= stopped["rows_done"] and loaded < 20_000

    again = first.ecm(STEWARD, "POST", "/api/counterparties/bulk-loads", files=files, data={"system": "rst"})
    assert again.status_code == 202, again.text
    done = wait_until(lambda: (s := first.ecm(STEWARD, "GET", f"/api/counterparties/bulk-loads/{again.json()['id']}")
                               .json())["status"] != "running" and s, timeout=120, message="loaded again")
    assert done["status"] == "done", done
    assert done["counts"] == {"unchanged": loaded, "created": 20_000 - loaded}, done["counts"]
    assert asyncio.run(registered(system, "rst")) == 20_000


def test_an_import_and_a_bulk_load_whose_replicas_are_stopped_for_a_restart_say_so_at_once(system, replicas):
    """A deploy's restart stops a CRM and an ECM replica with SIGTERM while one runs an
    import's dry run and the other a bulk load of the registry: each ends after the chunks
    in hand and reads as interrupted as soon as its process has exited, not a stale period
    later; the load with its report of the rows it got through."""
    first, _ = replicas
    crm3 = system.start_replica("crm", "crm-3", free_port())
    ecm3 = system.start_replica("ecm", "ecm-3", free_port())
    for url in (crm3, ecm3):
        wait_until(lambda u=url: _ready(u), timeout=90, message=f"{url} ready")
    third = Via(first._api, crm3, ecm3)

    def stopped_for_a_restart(name: str) -> None:
        system.kill(name, signal.SIGTERM)  # uvicorn stops gracefully, then exits by the signal it caught
        log = system._log(name).read_text()
        assert '"jobs_stopped"' in log and '"service_stopped"' in log, log[-2000:]

    rows = [[f"ООО «Перезапуск {i}»", ""] for i in range(40_000)]
    up = third.crm(SALES, "POST", "/api/imports", files={"file": ("big.csv", _csv(rows), "text/csv")})
    assert up.status_code == 201, up.text
    import_url = f"/api/imports/{up.json()['id']}"
    assert third.crm(SALES, "POST", f"{import_url}/dry-run").status_code == 202
    wait_until(lambda: first.crm(SALES, "GET", import_url).json()["rows_done"] > 0, timeout=60, interval=0.1,
               message="the dry run under way")
    stopped_for_a_restart("crm-3")
    job = first.crm(SALES, "GET", import_url).json()  # no stale rule needed: it said so itself
    assert job["status"] == "failed" and 0 < job["rows_done"] < len(rows), job
    assert job["error"] == f"interrupted: the CRM service stopped after {job['rows_done']} rows; run the dry run again"

    load_url, _ = _start_load(third, "trm", "Рестарт")
    wait_until(lambda: first.ecm(STEWARD, "GET", load_url).json()["rows_done"] > 0, timeout=60, interval=0.1,
               message="the load under way")
    stopped_for_a_restart("ecm-3")
    load = first.ecm(STEWARD, "GET", load_url).json()
    assert load["status"] == "failed", load
    assert load["error"].startswith(f"interrupted: the ECM service stopped after {load['rows_done']} rows")
    assert 0 < load["rows_done"] < 20_000 and asyncio.run(registered(system, "trm")) == load["rows_done"]
    report = first.ecm(STEWARD, "GET", load["report_url"])
    assert report.status_code == 200
    assert len(list(csv.DictReader(io.StringIO(report.content.decode("utf-8-sig"))))) == load["rows_done"]
    # ...and the import is run again on another replica, to its end.
    assert first.crm(SALES, "POST", f"{import_url}/dry-run").status_code == 202
    dry = _wait_import(first, up.json()["id"], "dry_run")
    assert (dry["status"], dry["rows_done"]) == ("dry_run", len(rows)), dry


async def registered(system, source: str) -> int:
    """Registry records that the loads of one source system created (one external ref each)."""
    engine = create_async_engine(system.settings.ecm_database_url)
    try:
        async with engine.connect() as conn:
            refs = ecm_tables.external_refs
            return await conn.scalar(select(func.count(func.distinct(refs.c.entity_id))).where(refs.c.system == source))
    finally:
        await engine.dispose()
