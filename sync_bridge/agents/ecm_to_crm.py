from sync_bridge.app import app, ecm_events_topic
from sync_bridge.handling import handle_ecm_event


@app.agent(ecm_events_topic)
async def ecm_to_crm(stream):
    async for event in stream.events():
        await handle_ecm_event(event)
