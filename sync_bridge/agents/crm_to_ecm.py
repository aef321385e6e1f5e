from sync_bridge.app import app, crm_events_topic
from sync_bridge.handling import handle_crm_event, handle_until_done


@app.agent(crm_events_topic, isolated_partitions=True)
async def crm_to_ecm(stream):
    async for event in stream.events():
        await handle_until_done(handle_crm_event, event)
