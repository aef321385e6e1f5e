from sync_bridge.app import app, ecm_events_topic
from sync_bridge.handling import handle_ecm_event, handle_until_done


@app.agent(ecm_events_topic, isolated_partitions=True)
async def ecm_to_crm(stream):
    async for event in stream.events():
        await handle_until_done(handle_ecm_event, event)
