from sync_bridge.app import app, ecm_events_topic, settings
from sync_bridge.handling import handle_ecm_events, handle_until_done


@app.agent(ecm_events_topic)
async def ecm_to_crm(stream):
    # As crm_to_ecm: one actor for all assigned partitions; acknowledged once the batch
    # is handled.
    async for events in stream.take_events(settings.batch_size, within=settings.batch_seconds):
        await handle_until_done(handle_ecm_events, events)
