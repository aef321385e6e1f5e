"""The floor under the CRM's API call: what this stack (uvicorn, FastAPI, SQLAlchemy over
asyncpg, PostgreSQL) costs per request on this machine with nothing of the product in it,
next to the CRM's own approval request call. The pipeline benchmark finds the CRM's API
the limiting stage; this says how much of its cost the stack itself sets.

    PYTHONPATH=. .venv/bin/python bench/api_floor.py --requests 3000 --rounds 2

Each round runs, one after the other (this machine's speed swings within the hour, so
only figures of the same round compare):
- empty: a FastAPI POST, its JSON body validated by a pydantic model, 202 with a small
  JSON answer; no database.
- sqlalchemy: the same, and one transaction of the CRM call's shape (BEGIN, one row read
  FOR UPDATE by primary key, a request row and an outbox row of ~1 KB inserted, COMMIT)
  through SQLAlchemy Core on an engine made by infra.db.make_engine.
- session: the same transaction through an AsyncSession, as the services' units of work
  run their statements.
- asyncpg: the same transaction on asyncpg alone.
- crm: the CRM's POST /api/deals/{id}/approval-requests (token check, middlewares,
  the event built and validated) with its outbox relay publishing each event to the
  broker; the bridge is stopped meanwhile (SIGSTOP), so the CRM does nothing else.
The client is bench/pipeline.py's `fire` (aiohttp, 32 requests in flight) for every row. Measured:
the server process's CPU per request (/proc), PostgreSQL's, and requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pipeline import (  # noqa: E402
    bench_system,
    bridge_held,
    cpu_seconds,
    fire,
    outbox_drained,
    postgres_pids,
    prepare,
    wait_in_progress,
)
from bench.table import print_table, summarise  # noqa: E402
from deploy.broker import free_port, wait_for_port  # noqa: E402
from tests.support.databases import create_pg_database, drop_pg_database  # noqa: E402

FLOORS = ("empty", "sqlalchemy", "session", "asyncpg")
SCHEMA = """
CREATE TABLE floor_documents (id varchar(36) PRIMARY KEY, deal_id varchar(36) NOT NULL);
CREATE TABLE floor_requests (id varchar(36) PRIMARY KEY, document_id varchar(36) NOT NULL,
                             requested_at timestamptz NOT NULL);
CREATE TABLE floor_outbox (id bigserial PRIMARY KEY, event_id varchar(36) NOT NULL UNIQUE,
                           topic varchar(200) NOT NULL, message_key varchar(200) NOT NULL,
                           body text NOT NULL, created_at timestamptz NOT NULL, published_at timestamptz);
"""
BODY_FILLER = "x" * 900  # an outbox row about the size of one crm.approval_requested envelope


class RequestIn(BaseModel):  # module level: FastAPI resolves the handler's annotations here
    document_id: str


class Accepted(BaseModel):
    id: str
    status: str


def floor_app(variant: str, dsn: str):
    """The floor service (runs in its own process, `--serve VARIANT`)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException
    from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, insert, select
    from sqlalchemy.ext.asyncio import AsyncSession

    from infra.db import make_engine

    metadata = MetaData()
    documents = Table("floor_documents", metadata, Column("id", String(36), primary_key=True),
                      Column("deal_id", String(36)))
    requests = Table("floor_requests", metadata, Column("id", String(36), primary_key=True),
                     Column("document_id", String(36)), Column("requested_at", DateTime(timezone=True)))
    outbox = Table("floor_outbox", metadata, Column("event_id", String(36)), Column("topic", String(200)),
                   Column("message_key", String(200)), Column("body", Text),
                   Column("created_at", DateTime(timezone=True)))
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app):
        if variant in ("sqlalchemy", "session"):
            state["engine"] = make_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
        elif variant == "asyncpg":
            state["pool"] = await asyncpg.create_pool(dsn, min_size=10, max_size=20)
        yield
        if "engine" in state:
            await state["engine"].dispose()
        if "pool" in state:
            await state["pool"].close()

    app = FastAPI(lifespan=lifespan)

    def event(request_id: str, document_id: str) -> tuple[str, str]:
        return str(uuid.uuid4()), json.dumps({"approval_request_id": request_id, "document_id": document_id,
                                              "filler": BODY_FILLER})

    async def sqlalchemy_transaction(executor, deal_id: str, document_id: str, request_id: str, now) -> None:
        """The statements of the transaction, on an AsyncConnection or an AsyncSession
        (both `execute` a Core statement with its parameters)."""
        found = (await executor.execute(select(documents.c.deal_id).where(documents.c.id == document_id)
                                        .with_for_update())).first()
        if found is None or found.deal_id != deal_id:
            raise HTTPException(404, "document not found")
        await executor.execute(insert(requests), {"id": request_id, "document_id": document_id, "requested_at": now})
        event_id, text = event(request_id, document_id)
        await executor.execute(insert(outbox), {"event_id": event_id, "topic": "crm.events", "message_key": deal_id,
                                                "body": text, "created_at": now})

    @app.post("/api/deals/{deal_id}/approval-requests", status_code=202, response_model=Accepted)
    async def request_approval(deal_id: str, body: RequestIn) -> Accepted:
        request_id, now = str(uuid.uuid4()), datetime.now(timezone.utc)
        if variant == "sqlalchemy":
            async with state["engine"].begin() as conn:
                await sqlalchemy_transaction(conn, deal_id, body.document_id, request_id, now)
        elif variant == "session":
            async with AsyncSession(state["engine"]) as session, session.begin():
                await sqlalchemy_transaction(session, deal_id, body.document_id, request_id, now)
        elif variant == "asyncpg":
            async with state["pool"].acquire() as conn, conn.transaction():
                found = await conn.fetchval("SELECT deal_id FROM floor_documents WHERE id = $1 FOR UPDATE",
                                            body.document_id)
                if found != deal_id:
                    raise HTTPException(404, "document not found")
                await conn.execute("INSERT INTO floor_requests (id, document_id, requested_at) VALUES ($1, $2, $3)",
                                   request_id, body.document_id, now)
                event_id, text = event(request_id, body.document_id)
                await conn.execute("INSERT INTO floor_outbox (event_id, topic, message_key, body, created_at) "
                                   "VALUES ($1, $2, $3, $4, $5)", event_id, "crm.events", deal_id, text, now)
        return Accepted(id=request_id, status="requested")

    return app


def serve(variant: str, port: int, dsn: str) -> None:
    import uvicorn

    # the services' own uvicorn settings (infra.service_cli)
    uvicorn.run(floor_app(variant, dsn), host="127.0.0.1", port=port, log_level="warning", timeout_keep_alive=5)


class Target:
    """Whatever `fire` needs of a system: where the CRM API is."""

    def __init__(self, base_url: str):
        self.crm_url = base_url


async def fill_documents(dsn: str, n: int) -> list[tuple[str, str]]:
    items = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(n)]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table("floor_documents", records=[(doc, deal) for deal, doc in items],
                                         columns=["id", "deal_id"])
        await conn.execute("ANALYZE floor_documents")
    finally:
        await conn.close()
    return items


def warm_up_split(items: list) -> tuple[list, list]:
    """A tenth of the calls (at most 200) to warm up with, the rest to measure."""
    warm = min(200, len(items) // 10)
    return items[:warm], items[warm:]


def postgres_cpu() -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in postgres_pids()}


def measure(pid: int, run) -> dict:
    """Runs `run()` (the requests, and whatever must finish with them); the server's and
    PostgreSQL's CPU seconds and the wall time it took. PostgreSQL's is summed over the
    backends alive at the end (a backend gone meanwhile, e.g. a waiting loop's own
    connection, takes its CPU with it; the servers' pooled connections stay)."""
    server, pg, wall = cpu_seconds(pid), postgres_cpu(), time.perf_counter()
    run()
    pg_used = sum(used - pg.get(backend, 0.0) for backend, used in postgres_cpu().items())
    return {"server": cpu_seconds(pid) - server, "postgresql": pg_used, "wall": time.perf_counter() - wall}


def floor_round(variant: str, n: int) -> dict:
    name, url = create_pg_database("bench_floor")
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    port = free_port()
    server = None
    try:
        async def schema():
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(SCHEMA)
            finally:
                await conn.close()
        asyncio.run(schema())
        items = asyncio.run(fill_documents(dsn, n))
        server = subprocess.Popen([sys.executable, __file__, "--serve", variant, "--port", str(port), "--dsn", dsn],
                                  env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        base = f"http://127.0.0.1:{port}"
        wait_for_port(port, timeout=30)  # uvicorn listens once the app's lifespan has started
        warm, rest = warm_up_split(items)  # warm-up: connections opened, statements prepared
        asyncio.run(fire(Target(base), "floor", warm))
        used = measure(server.pid, lambda: asyncio.run(fire(Target(base), "floor", rest)))
        return {**used, "requests": len(rest)}
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        drop_pg_database(name)


def crm_round(n: int) -> dict:
    with bench_system() as (system, token):
        items = asyncio.run(prepare(system, token, n))
        crm_url = system.env()["CRM_DATABASE_URL"]
        asyncio.run(outbox_drained(crm_url, timeout=120))
        warm, rest = warm_up_split(items)
        started = asyncio.run(fire(system, token, warm))
        # the bridge's answers to the warm-up applied before it stops: the CRM idles after
        asyncio.run(wait_in_progress(crm_url, len(warm), started, timeout=120))
        time.sleep(1)
        with bridge_held(system):
            def run():
                asyncio.run(fire(system, token, rest))
                asyncio.run(outbox_drained(crm_url, timeout=max(120, n / 10)))
            used = measure(system.processes["crm"].pid, run)
        return {**used, "requests": len(rest)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="per row and round (a tenth of it warms up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", choices=FLOORS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.dsn)
        return

    results: dict[str, list[dict]] = {name: [] for name in (*FLOORS, "crm")}
    for round_no in range(1, args.rounds + 1):
        for variant in FLOORS:
            results[variant].append(floor_round(variant, args.requests))
        results["crm"].append(crm_round(args.requests))
        for name, runs in results.items():
            r = runs[-1]
            print(f"round {round_no} {name}: {r['server'] * 1000 / r['requests']:.2f} ms server, "
                  f"{r['postgresql'] * 1000 / r['requests']:.2f} ms PostgreSQL, "
                  f"{r['requests'] / r['wall']:.0f} req/s", flush=True)

    def per_request(name: str, key: str) -> list[float]:
        return [r[key] * 1000 / r["requests"] for r in results[name]]

    labels = {"empty": "FastAPI POST, no database", "sqlalchemy": "+ one transaction, SQLAlchemy Core",
              "session": "+ the same through an AsyncSession",
              "asyncpg": "+ one transaction, asyncpg alone",
              "crm": "the CRM's approval request call, its relay publishing"}
    rows: list[tuple[str, object, str]] = [("cores", os.cpu_count(), ""), ("rounds", args.rounds, "")]
    for name, label in labels.items():
        server, pg = per_request(name, "server"), per_request(name, "postgresql")
        rates = [r["requests"] / r["wall"] for r in results[name]]
        rows.append((f"{label}: CPU per request", f"{statistics.median(server):.2f} ms",
                     f"PostgreSQL {statistics.median(pg):.2f} ms; {statistics.median(rates):.0f} req/s; rounds: "
                     + ", ".join(f"{s:.2f}" for s in server)))
    crm, floor = statistics.median(per_request("crm", "server")), statistics.median(per_request("sqlalchemy", "server"))
    rows.append(("CRM call / stack floor (SQLAlchemy)", f"{crm / floor:.1f}x",
                 f"the stack alone lets one core carry {1000 / floor:.0f} req/s of such calls"))
    print_table(rows)
    summarise([
        ("API floor: FastAPI + SQLAlchemy transaction, CPU per request",
         f"{floor:.2f} ms", f"the CRM's call {crm:.2f} ms ({crm / floor:.1f}x)", None),
    ])


if __name__ == "__main__":
    main()
