"""Chaos: a flow of approval requests (2,000 by default, CHAOS_REQUESTS) through the real
processes on PostgreSQL while the CRM is killed mid-relay, the bridge is SIGKILLed three
times, the ECM is stopped for 30 s, the broker is frozen with SIGSTOP for 20 s and the
database server ends every connection of both services (a restart or failover). Then
every request has exactly one ECM approval, its organization exactly one counterparty
(link or pending record), its document exactly one stored version with the right sha256,
every CRM deal the status the ECM last published, and no outbox holds anything."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.e2e.conftest import running_system
from tests.e2e.journey import SALES
from tests.support.databases import end_connections
from tests.support.polling import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
from bench.pipeline import fire, prepare  # noqa: E402

REQUESTS = int(os.environ.get("CHAOS_REQUESTS", "2000"))


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    yield from running_system(tmp_path_factory, "postgresql")


async def _scalar_rows(url: str, sql: str) -> list[tuple]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(text(sql))).all()]
    finally:
        await engine.dispose()


def rows(url: str, sql: str) -> list[tuple]:
    return asyncio.run(_scalar_rows(url, sql))


def restart(system, name: str, sig: int = signal.SIGKILL, down_for: float = 0.0) -> None:
    system.kill(name, sig)
    time.sleep(down_for)
    system.start_process(name)
    system.wait_healthy(names=(name,), timeout=90)


def freeze_broker(system, seconds: float) -> None:
    broker = system.processes["broker"]
    broker.send_signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        broker.send_signal(signal.SIGCONT)


@pytest.mark.timeout(900)
def test_nothing_is_lost_or_doubled_through_kills_stops_and_a_frozen_broker(system):
    token = next(u["token"] for u in system.users if u["name"] == SALES)
    items = asyncio.run(prepare(system, token, REQUESTS))
    crm, ecm = system.settings.crm_database_url, system.settings.ecm_database_url
    log: list[str] = []
    started = time.monotonic()

    def note(what: str) -> None:
        log.append(f"{time.monotonic() - started:6.1f}s {what}")

    def chaos() -> None:
        # The CRM's outbox relay is mid-batch while the requests pour in.
        wait_until(lambda: rows(crm, "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")[0][0] > 0,
                   timeout=60, interval=0.05, message="the relay at work")
        restart(system, "crm")
        note("crm (and its outbox relay) SIGKILLed mid-batch and restarted")
        for i in range(3):
            time.sleep(4)
            restart(system, "bridge", down_for=1)
            note(f"bridge SIGKILLed and restarted ({i + 1}/3)")
        time.sleep(3)
        restart(system, "ecm", sig=signal.SIGTERM, down_for=30)
        note("ecm stopped for 30 s and restarted")
        time.sleep(3)
        freeze_broker(system, 20)
        note("broker frozen (SIGSTOP) for 20 s and resumed")
        time.sleep(3)
        for url in (crm, ecm):  # as a PostgreSQL restart or failover does
            asyncio.run(end_connections(url))
        note("every database connection of the CRM and the ECM ended by the server")

    # The requests go out from a helper thread; the kills and restarts stay on this thread:
    # children are started with PR_SET_PDEATHSIG, which fires when the *thread* that
    # started them ends, so a short-lived chaos thread would take its restarts with it.
    errors: list[BaseException] = []

    def send() -> None:
        try:
            asyncio.run(fire_with_retries(system, token, items))
            note(f"{len(items)} approval requests accepted")
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    sender = threading.Thread(target=send, daemon=True)  # never holds the run open if chaos() fails
    sender.start()
    chaos()
    sender.join(timeout=600)
    assert not errors, errors
    assert not sender.is_alive()

    # Drained: every request has a status from the ECM, and the outboxes are empty.
    wait_until(lambda: rows(crm, "SELECT count(*) FROM approval_requests WHERE registry_approval_id IS NULL"
                            )[0][0] == 0, timeout=600, interval=2, message="every request answered by the ECM")
    wait_until(lambda: rows(crm, "SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0] == 0
               and rows(ecm, "SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0] == 0,
               timeout=120, interval=1, message="outboxes empty")
    note("drained")

    requests = rows(crm, "SELECT id, organization_id, status FROM approval_requests")
    assert len(requests) == REQUESTS
    approvals = rows(ecm, "SELECT r.external_id, count(*) FROM external_refs r JOIN approvals a ON a.id = r.entity_id "
                          "WHERE r.entity_type = 'approval' AND r.system = 'crm' GROUP BY r.external_id")
    assert len(approvals) == REQUESTS and {n for _, n in approvals} == {1}
    assert rows(ecm, "SELECT count(*) FROM approvals")[0][0] == REQUESTS  # none without its reference either
    organizations = {org for _, org, _ in requests}
    parties = rows(ecm, "SELECT external_id, count(*) FROM external_refs WHERE entity_type = 'counterparty' "
                        "AND system = 'crm' GROUP BY external_id")
    assert {ext for ext, _ in parties} == organizations and {n for _, n in parties} == {1}
    versions = rows(ecm, "SELECT r.external_id, v.sha256 FROM external_refs r JOIN document_versions v "
                         "ON v.document_id = r.entity_id WHERE r.entity_type = 'document' AND r.system = 'crm'")
    crm_docs = dict(rows(crm, "SELECT d.id, d.sha256 FROM documents d "
                              "JOIN approval_requests a ON a.document_id = d.id"))
    assert len(versions) == REQUESTS and dict(versions) == crm_docs  # one version each, the right bytes
    final = dict(rows(ecm, "SELECT r.external_id, a.status FROM external_refs r JOIN approvals a "
                           "ON a.id = r.entity_id WHERE r.entity_type = 'approval' AND r.system = 'crm'"))
    assert {rid: status for rid, _, status in requests} == final
    for process in ("crm", "ecm", "bridge", "broker"):
        assert system.processes[process].poll() is None
    print("\nchaos run:", *log, f"requests {len(requests)}, approvals {len(approvals)}, counterparty refs "
          f"{len(parties)}, document versions {len(versions)}, outboxes empty", sep="\n  ")


async def fire_with_retries(system, token: str, items) -> None:
    """The requests, resent while the CRM is down (the CRM answers a repeated request for
    the same document with the request it already has)."""
    pending = list(items)
    while pending:
        failed = []
        for chunk in [pending[i:i + 200] for i in range(0, len(pending), 200)]:
            try:
                await fire(system, token, chunk)
            except Exception:
                failed += chunk
        pending = failed
        if pending:
            await asyncio.sleep(1)
