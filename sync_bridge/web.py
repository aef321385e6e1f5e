"""The bridge's own small web surface (faust web): health and metrics."""

from datetime import datetime, timezone

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infra.metrics import PAUSED
from sync_bridge.app import app, membership
from sync_bridge.control import DIRECTIONS
from sync_bridge.handling import LAG_REPORTS, gates


@app.page("/health")
async def health(web, request):
    consumer = app.consumer
    assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.assignment()) if consumer else []
    return web.json({"status": "ok", "service": "bridge", "assigned_partitions": assigned,
                     "group": {"state": membership.state,
                               "since": datetime.fromtimestamp(membership.since, timezone.utc).isoformat()},
                     "directions": {d: gates.describe(d) for d in DIRECTIONS},
                     "paused": {d: gates.is_paused(d) for d in DIRECTIONS}})


def export_pauses(gates) -> None:
    """bridge_direction_paused per direction once the worker knows the operators'
    decisions; no series while it starts (a 0 would claim a direction open that is not,
    a 1 would silence the stall alerts for a worker stuck at start)."""
    if not gates.caught_up:
        PAUSED.clear()
        return
    for direction in DIRECTIONS:
        PAUSED.labels(direction).set(1 if gates.is_paused(direction) else 0)


@app.page("/metrics")
async def metrics(web, request):
    export_pauses(gates)
    consumer = app.consumer
    assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()} if consumer else set()
    for report in list(LAG_REPORTS.values()):
        report.keep_only(assigned)
    return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
