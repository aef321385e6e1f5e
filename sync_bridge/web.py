"""The bridge's own small web surface (faust web): health."""

from sync_bridge.app import app
from sync_bridge.control import DIRECTIONS
from sync_bridge.handling import gates


@app.page("/health")
async def health(web, request):
    consumer = app.consumer
    assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.assignment()) if consumer else []
    paused = {d: gates.is_paused(d) for d in DIRECTIONS}
    return web.json({"status": "ok", "service": "bridge", "assigned_partitions": assigned, "paused": paused})
