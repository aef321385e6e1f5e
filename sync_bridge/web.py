"""The bridge's own small web surface (faust web): health."""

from sync_bridge.app import app


@app.page("/health")
async def health(web, request):
    consumer = app.consumer
    assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.assignment()) if consumer else []
    return web.json({"status": "ok", "service": "bridge", "assigned_partitions": assigned})
