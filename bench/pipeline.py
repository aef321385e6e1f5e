"""Pipeline throughput: N approval requests through the real path (CRM API -> outbox ->
broker -> bridge -> document transfer -> ECM counterparty + approval -> ECM outbox ->
bridge -> CRM status `in_progress`), next to the raw ceiling of the same broker
(aiokafka alone, the same number of equally sized messages produced and consumed).

    PYTHONPATH=. .venv/bin/python bench/pipeline.py --requests 1000 --backend postgresql

Then, unless --seconds 0, latency under steady load: --rate requests/s for --seconds,
p50/p95/p99 from the CRM API call to the CRM applying `in_progress` (PostgreSQL only),
and how long each stage of the path took (from the marks each leaves in the databases).

Unless --backlog 0, a backlog's drain as well: that many more requests accepted while the
bridge is held (SIGSTOP, as in an outage of the bridge: the CRM's relay has published
them all), then the bridge resumed and timed until the CRM shows every one `in_progress`
- the catch-up rate after an outage, and what the path behind the CRM's API costs on its
own (the API call and its relay are outside that window).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.table import print_table, summarise  # noqa: E402
from deploy.broker import free_port  # noqa: E402
from deploy.local_run import LauncherSettings, LocalSystem  # noqa: E402
from infra.kafka import ensure_topics  # noqa: E402
from tests.support.databases import create_pg_database, drop_pg_database  # noqa: E402
from tests.support.polling import async_wait_until  # noqa: E402


async def prepare(system: LocalSystem, token: str, n: int) -> list[tuple[str, str]]:
    """Organizations, deals and documents made beforehand (not timed). aiohttp, as in
    `fire`: with httpx the client took ~40 % of a core beside the CRM it waits for."""
    headers = {"Authorization": f"Bearer {token}"}
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(base_url=system.crm_url, headers=headers,
                                     connector=aiohttp.TCPConnector(limit=16),
                                     timeout=aiohttp.ClientTimeout(total=60)) as client:
        async def created(path: str, **kwargs) -> dict:
            async with client.post(path, **kwargs) as r:
                assert r.status == 201, await r.text()
                return await r.json()

        async def one(i):
            async with sem:
                org = await created("/api/organizations", json={"name": f"Bench {i}"})
                deal = await created("/api/deals", json={"organization_id": org["id"], "title": "b"})
                form = aiohttp.FormData({"doc_type": "contract"})
                form.add_field("file", f"contract {i} {uuid.uuid4()}".encode(), filename="c.txt",
                               content_type="text/plain")
                doc = await created(f"/api/deals/{deal['id']}/documents", data=form)
                return deal["id"], doc["id"]
        return await asyncio.gather(*(one(i) for i in range(n)))


async def fire(system: LocalSystem, token: str, items) -> float:
    """Every request, 32 in flight, each one asserted accepted; when the first was sent.
    aiohttp, as in `steady_load`: the client shares the cores with the system it
    measures, and httpx (at most 20 kept-alive connections by default, so with 32 in
    flight it kept reconnecting) cost three times its CPU per call and the CRM more for
    each new connection (bench/RESULTS.md, 2026-12-05)."""
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(base_url=system.crm_url, headers=headers, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as client:
        async def one(deal_id, doc_id):
            async with client.post(f"/api/deals/{deal_id}/approval-requests", json={"document_id": doc_id}) as r:
                assert r.status == 202, await r.text()
        started = time.perf_counter()
        await asyncio.gather(*(one(d, doc) for d, doc in items))
        return started


async def wait_in_progress(crm_db_url: str, n: int, started: float, timeout: float) -> float:
    engine = create_async_engine(crm_db_url)
    try:
        while True:
            async with engine.connect() as conn:
                done = await conn.scalar(text("SELECT count(*) FROM approval_requests WHERE status = 'in_progress'"))
            if done >= n:
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"only {done}/{n} in progress after {timeout}s")
            await asyncio.sleep(0.2)
    finally:
        await engine.dispose()


async def outbox_drained(url: str, timeout: float) -> None:
    """Waits until the CRM's relay has published every outbox row (`url`: the service's
    database URL, PostgreSQL or SQLite)."""
    engine = create_async_engine(url)
    try:
        async def drained():
            async with engine.connect() as conn:
                return await conn.scalar(text("SELECT count(*) = 0 FROM outbox WHERE published_at IS NULL"))
        await async_wait_until(drained, timeout=timeout, interval=0.05,
                               message="the CRM's relay to publish every outbox row")
    finally:
        await engine.dispose()


@contextmanager
def bridge_held(system: LocalSystem):
    """The bridge stopped (SIGSTOP) for the block and resumed after it, as in an outage of
    the bridge: the CRM goes on accepting requests and its relay publishing them."""
    bridge = system.processes["bridge"]
    bridge.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        bridge.send_signal(signal.SIGCONT)


def backlog_drain(system: LocalSystem, token: str, items, in_progress_before: int) -> tuple[float, dict[str, float]]:
    """`items` accepted by the CRM while the bridge is held, then the bridge resumed: the
    seconds until the CRM shows all of them `in_progress`, and the CPU each process spent
    meanwhile (seconds)."""
    crm_url = system.env()["CRM_DATABASE_URL"]
    with bridge_held(system):
        asyncio.run(fire(system, token, items))
        asyncio.run(outbox_drained(crm_url, timeout=max(120, len(items) / 10)))
        cpu_before = cpu_by_process(system)
        started = time.perf_counter()
    seconds = asyncio.run(wait_in_progress(crm_url, in_progress_before + len(items), started,
                                           timeout=max(120, len(items))))
    return seconds, cpu_since(system, cpu_before)


async def raw_ceiling(bootstrap: str, n: int, size: int) -> float:
    topic = f"bench.raw.{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, {topic: 6})
    payload = b"x" * size
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"g-{topic}",
                                auto_offset_reset="earliest", session_timeout_ms=10000, heartbeat_interval_ms=1000)
    await producer.start()
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=100)  # join the group before the clock starts
        started = time.perf_counter()
        futures = [await producer.send(topic, payload, key=str(i % 997).encode()) for i in range(n)]
        await asyncio.gather(*futures)
        got = 0
        while got < n:
            batch = await consumer.getmany(timeout_ms=1000)
            got += sum(len(v) for v in batch.values())
        return time.perf_counter() - started
    finally:
        await producer.stop()
        await consumer.stop()


async def steady_load(system: LocalSystem, token: str, items, rate: float) -> tuple[dict[str, float], Counter, dict]:
    """One approval request every 1/rate seconds (open loop: the next one does not wait
    for the answer to the last). Returns {request id: wall-clock second it was sent} for
    the accepted ones, why the others were not accepted (HTTP status or the client's
    error class, with how many of each), and how the load itself went: the rate actually
    sent (first to last send) and the API calls' own times.

    The client is aiohttp, not httpx: it runs on the same 2 cores as the system it
    measures, and httpx's pool cost about 10 ms of CPU per call here once calls queue
    (half a core at 50 req/s), so the load fell behind its schedule and its own CPU
    slowed the system down (bench/RESULTS.md, 2026-12-03)."""
    headers = {"Authorization": f"Bearer {token}"}
    sent: dict[str, float] = {}
    failed: Counter = Counter()
    sent_at: list[float] = []
    call_s: list[float] = []
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(base_url=system.crm_url, headers=headers, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as client:
        async def one(deal_id, doc_id):
            at = time.time()
            began = time.perf_counter()
            sent_at.append(began)
            try:
                async with client.post(f"/api/deals/{deal_id}/approval-requests",
                                       json={"document_id": doc_id}) as r:
                    body = await r.json() if r.status == 202 else None
                    status = r.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                failed[type(exc).__name__] += 1
                return
            call_s.append(time.perf_counter() - began)
            if status == 202:
                sent[body["id"]] = at
            else:
                failed[f"HTTP {status}"] += 1

        start = time.perf_counter()
        tasks = []
        for i, (deal_id, doc_id) in enumerate(items):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(deal_id, doc_id)))
        await asyncio.gather(*tasks)
    span = max(sent_at) - min(sent_at) if len(sent_at) > 1 else 0.0
    load = {"achieved_rate": (len(sent_at) - 1) / span if span else float("nan"),
            "call_s": sorted(call_s)}
    return sent, failed, load


async def latencies(crm_db_url: str, sent: dict[str, float], timeout: float) -> list[float]:
    """Seconds from each API call (client clock) to the CRM applying in_progress (the
    CRM's record of it; same host, same clock), once every request got there."""
    engine = create_async_engine(crm_db_url)
    query = text("SELECT h.approval_request_id, EXTRACT(EPOCH FROM min(h.applied_at)) FROM approval_status_history h "
                 "WHERE h.approval_request_id = ANY(:ids) AND h.status = 'in_progress' "
                 "GROUP BY h.approval_request_id")
    started = time.perf_counter()
    try:
        while True:
            async with engine.connect() as conn:
                found = {r[0]: float(r[1]) for r in (await conn.execute(query, {"ids": list(sent)})).all()}
            if len(found) >= len(sent):
                return [found[i] - sent[i] for i in sent]
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"only {len(found)}/{len(sent)} in progress after {timeout}s")
            await asyncio.sleep(1)
    finally:
        await engine.dispose()


STAGES = (
    ("CRM API commit -> CRM relay published", 0, 1),
    ("CRM published -> ECM document stored (bridge, transfer)", 1, 2),
    ("ECM document stored -> ECM approval committed (bridge, ECM consumer)", 2, 3),
    ("ECM approval committed -> ECM relay published", 3, 4),
    ("ECM published -> CRM in_progress (bridge, CRM consumer)", 4, 5),
)


async def stage_times(crm_db_url: str, ecm_db_url: str, request_ids) -> list[tuple[str, list[float]]]:
    """Where a steady run's latency went: for each approval request, the moments each
    stage left its mark in the two databases (the CRM's outbox row created and
    published, the ECM's stored document version, the ECM's approval event created and
    published, the CRM's in_progress), and the seconds between consecutive ones."""
    wanted = list(request_ids)
    crm_query = text(
        "SELECT o.body::json->'payload'->'document'->>'id', EXTRACT(EPOCH FROM o.created_at), "
        "EXTRACT(EPOCH FROM o.published_at), o.correlation_id, "
        "(SELECT EXTRACT(EPOCH FROM min(h.applied_at)) FROM approval_status_history h "
        " WHERE h.approval_request_id = o.body::json->'payload'->>'approval_request_id' AND h.status = 'in_progress') "
        "FROM outbox o WHERE o.message_type = 'crm.approval_requested' "
        "AND o.body::json->'payload'->>'approval_request_id' = ANY(:ids)")
    stored_query = text(
        "SELECT e.external_id, EXTRACT(EPOCH FROM min(v.created_at)) FROM external_refs e "
        "JOIN document_versions v ON v.document_id = e.entity_id WHERE e.entity_type = 'document' "
        "GROUP BY e.external_id")
    started_query = text(
        "SELECT correlation_id, EXTRACT(EPOCH FROM min(created_at)), EXTRACT(EPOCH FROM min(published_at)) "
        "FROM outbox WHERE message_type = 'ecm.approval_status_changed' GROUP BY correlation_id")
    crm_engine, ecm_engine = create_async_engine(crm_db_url), create_async_engine(ecm_db_url)
    try:
        async with crm_engine.connect() as conn:
            crm_rows = (await conn.execute(crm_query, {"ids": wanted})).all()
        async with ecm_engine.connect() as conn:
            stored = {ref: float(at) for ref, at in (await conn.execute(stored_query)).all()}
            started = {c: (float(a), float(b)) for c, a, b in (await conn.execute(started_query)).all() if b}
    finally:
        await crm_engine.dispose()
        await ecm_engine.dispose()
    moments = [(float(created), float(published), stored[document_id], *started[correlation_id], float(done))
               for document_id, created, published, correlation_id, done in crm_rows
               if published and done and document_id in stored and correlation_id in started]
    return [(name, sorted(m[end] - m[begin] for m in moments)) for name, begin, end in STAGES]


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a live process has used (/proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def cpu_by_process(system: LocalSystem) -> dict[str, float]:
    """CPU seconds so far of each process of the system and of all PostgreSQL backends
    (the server is shared: other work on it counts too)."""
    used = {name: cpu_seconds(p.pid) for name, p in system.processes.items()}
    used["postgresql"] = sum(cpu_seconds(pid) for pid in postgres_pids())
    return used


def cpu_since(system: LocalSystem, before: dict[str, float]) -> dict[str, float]:
    """CPU seconds each process spent since `before` (a `cpu_by_process` reading)."""
    after = cpu_by_process(system)
    return {name: after[name] - before.get(name, 0.0) for name in after}


def round_trips(system: LocalSystem) -> dict[str, float]:
    """db_round_trips_total of the CRM and the ECM so far (their /metrics): statements,
    BEGIN, COMMIT and ROLLBACK each sent to the database and waited for. Unlike CPU
    time it does not depend on how busy the machine is."""
    counts = {}
    for name, url in (("crm", system.crm_url), ("ecm", system.ecm_url)):
        text_ = httpx.get(f"{url}/metrics", timeout=30).text
        counts[name] = sum(float(line.split()[-1]) for line in text_.splitlines()
                           if line.startswith("db_round_trips_total"))
    return counts


@contextmanager
def bench_system(backend: str = "postgresql"):
    """The whole system started on fresh databases (PostgreSQL: one per service, dropped
    afterwards), its children's logs under /tmp/bench-*/logs; yields it and a sales rep's
    token, and stops it after."""
    var = Path(f"/tmp/bench-{uuid.uuid4().hex[:6]}")
    dbs, urls = [], {}
    try:
        if backend == "postgresql":
            for service in ("crm", "ecm"):
                name, url = create_pg_database(f"bench_{service}")
                dbs.append(name)
                urls[f"{service}_database_url"] = url
        settings = LauncherSettings(var_dir=var, crm_port=free_port(), ecm_port=free_port(),
                                    bridge_web_port=free_port(), **urls)
        system = LocalSystem(settings, log_dir=var / "logs", extra_env={"LOG_LEVEL": "WARNING"})
        try:
            system.start(timeout=120)
            yield system, next(u["token"] for u in system.users if u["name"] == "sales-anna")
        finally:
            system.stop()
    finally:
        for name in dbs:
            drop_pg_database(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--rate", type=float, default=100, help="steady load for the latency figures, req/s")
    parser.add_argument("--seconds", type=float, default=60, help="how long the steady load runs (0: skip)")
    parser.add_argument("--backlog", type=int, default=1000,
                        help="requests accepted while the bridge is held, then drained (0: skip)")
    args = parser.parse_args()
    n = args.requests

    with bench_system(args.backend) as (system, token):
        items = asyncio.run(prepare(system, token, n))
        time.sleep(2)
        cpu_before, trips_before = cpu_by_process(system), round_trips(system)
        client_before = time.process_time()
        started_wall = time.perf_counter()
        started = asyncio.run(fire(system, token, items))
        accept_s = time.perf_counter() - started_wall
        crm_url = system.env()["CRM_DATABASE_URL"]
        e2e_s = asyncio.run(wait_in_progress(crm_url, n, started, timeout=max(120, n)))
        client_ms = (time.process_time() - client_before) * 1000 / n
        cpu_ms = {name: seconds * 1000 / n for name, seconds in cpu_since(system, cpu_before).items()}
        trips_after = round_trips(system)
        trips = {name: (trips_after[name] - trips_before[name]) / n for name in trips_after}
        body_size = 1200  # about the size of one crm.approval_requested envelope
        raw_s = asyncio.run(raw_ceiling(system.bootstrap_servers, n, body_size))
        rss = {name: peak_rss_mb(p.pid) for name, p in system.processes.items() if name != "broker"}
        drain_s, drain_ms = None, {}
        if args.backlog:
            backlog = asyncio.run(prepare(system, token, args.backlog))
            drain_s, drain_cpu = backlog_drain(system, token, backlog, in_progress_before=n)
            drain_ms = {name: seconds * 1000 / args.backlog for name, seconds in drain_cpu.items()}
        steady = int(args.rate * args.seconds)
        lat: list[float] = []
        stages: list[tuple[str, list[float]]] = []
        refused: Counter = Counter()
        load: dict = {}
        if steady and args.backend == "postgresql":
            more = asyncio.run(prepare(system, token, steady))
            sent, refused, load = asyncio.run(steady_load(system, token, more, args.rate))
            lat = sorted(asyncio.run(latencies(crm_url, sent, timeout=max(300, steady))))
            stages = asyncio.run(stage_times(crm_url, system.env()["ECM_DATABASE_URL"], sent))

    cpu_all, drain_all = sum(cpu_ms.values()), sum(drain_ms.values())
    cpu_ceiling = os.cpu_count() * 1000 / cpu_all
    rows = [
        ("cores", os.cpu_count(), ""),
        ("backend", args.backend, ""),
        ("approval requests", n, ""),
        ("CRM API accepted (202) in", f"{accept_s:.2f} s", f"{n / accept_s:.0f} req/s"),
        ("end to end: request -> CRM in_progress", f"{e2e_s:.2f} s", f"{n / e2e_s:.0f} req/s"),
        *([("backlog drained after the bridge was held", f"{drain_s:.2f} s",
            f"{args.backlog / drain_s:.0f} req/s; {args.backlog} requests; CPU per request {drain_all:.1f} ms ("
            + ", ".join(f"{name} {ms:.1f}" for name, ms in drain_ms.items()) + ")")]
          if drain_s else []),
        ("raw broker ceiling (aiokafka produce+consume)", f"{raw_s:.2f} s", f"{n / raw_s:.0f} msg/s"),
        ("ratio end-to-end / raw", "", f"{(n / e2e_s) / (n / raw_s):.3f}"),
        *[(f"peak RSS {name}", f"{mb:.0f} MB", "") for name, mb in rss.items()],
        *[(f"CPU per request: {name}", f"{ms:.1f} ms", "") for name, ms in cpu_ms.items()],
        *[(f"DB round trips per request: {name}", f"{count:.1f}",
           "statements, BEGIN, COMMIT (db_round_trips_total)" if name == "crm" else "")
          for name, count in trips.items()],
        ("CPU per request: load generator", f"{client_ms:.1f} ms",
         "this benchmark's own process (its aiohttp client, 32 in flight), on the same cores; not in 'all'"),
        ("CPU per request: all", f"{cpu_all:.1f} ms",
         f"{os.cpu_count()} cores carry at most {cpu_ceiling:.0f} req/s "
         "of this path (the physical limit; the CRM API call itself included)"),
    ]
    end_to_end = n / e2e_s
    figures = [
        (f"pipeline: end to end ({n:,} requests, {args.backend})", f"{end_to_end:.0f} req/s", ">= 500 req/s",
         end_to_end >= 500),
        *([("pipeline: backlog drained after the bridge was held", f"{args.backlog / drain_s:.0f} req/s",
            f"{drain_all:.1f} ms CPU per request, API not in it", None)]
          if drain_s else []),
        ("pipeline: raw broker ceiling, ratio", f"{n / raw_s:,.0f} msg/s, {end_to_end / (n / raw_s):.3f}", "", None),
        ("pipeline: DB round trips per request (CRM + ECM)", f"{sum(trips.values()):.1f}",
         ", ".join(f"{name} {count:.1f}" for name, count in trips.items()), None),
        ("pipeline: CPU per request, all processes", f"{cpu_all:.1f} ms",
         f"{os.cpu_count()} cores allow {cpu_ceiling:.0f} req/s", None),
        *[(f"peak RSS {name}", f"{mb:.0f} MB", "<= 300 MB" if name == "bridge" else "<= 400 MB",
           mb <= (300 if name == "bridge" else 400)) for name, mb in rss.items()],
    ]
    if lat:
        q = statistics.quantiles(lat, n=100)
        rows.append((f"latency at {args.rate:g} req/s for {args.seconds:g} s: p50", f"{q[49]:.2f} s",
                     f"p95 {q[94]:.2f} s, p99 {q[98]:.2f} s, max {lat[-1]:.2f} s (target p99 <= 1 s); "
                     f"API call -> CRM in_progress; {len(lat)} accepted, {sum(refused.values())} not accepted"
                     + (f" ({', '.join(f'{why}: {n}' for why, n in refused.most_common())})" if refused else "")))
        calls = statistics.quantiles(load["call_s"], n=100)
        rows.append(("steady load actually sent", f"{load['achieved_rate']:.1f} req/s",
                     f"asked {args.rate:g} req/s; the API call itself: p50 {calls[49] * 1000:.0f} ms, "
                     f"p99 {calls[98] * 1000:.0f} ms"))
        for name, seconds in stages:
            if len(seconds) > 1:
                sq = statistics.quantiles(seconds, n=100)
                rows.append((f"  stage: {name}", f"p50 {sq[49] * 1000:.0f} ms",
                             f"p95 {sq[94] * 1000:.0f} ms, p99 {sq[98] * 1000:.0f} ms ({len(seconds)} requests)"))
        figures.append((f"latency p50 / p95 / p99 at {args.rate:g} req/s for {args.seconds:g} s",
                        f"{q[49]:.2f} / {q[94]:.2f} / {q[98]:.2f} s", "p99 <= 1 s",
                        # a load that fell behind its schedule did not test the target
                        q[98] <= 1.0 and load["achieved_rate"] >= 0.95 * args.rate))
    print_table(rows)
    summarise(figures)


if __name__ == "__main__":
    main()
