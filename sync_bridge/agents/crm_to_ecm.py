from sync_bridge.app import app, crm_events_topic, settings
from sync_bridge.handling import handle_crm_events, handle_until_done


# One actor for every partition this worker is assigned (faust's default concurrency 1,
# not isolated): a batch takes the events of all of them, each partition's in order, so
# under a steady load it holds a few events of each instead of one, and its documents
# travel in one pair of HTTP calls (ADR 0013).
@app.agent(crm_events_topic)
async def crm_to_ecm(stream):
    # A batch's events are acknowledged (and their offsets may be committed) only once it
    # is handled: faust's take_events acks after the loop body returns.
    async for events in stream.take_events(settings.batch_size, within=settings.batch_seconds):
        await handle_until_done(handle_crm_events, events)
