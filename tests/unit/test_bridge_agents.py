import asyncio
from types import SimpleNamespace

from sync_bridge import handling


async def test_an_event_whose_dead_letter_cannot_be_written_is_retried_in_place(monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _no_wait)
    calls = []

    async def handle(event):
        calls.append(event)
        if len(calls) < 3:
            raise ConnectionError("broker away while dead-lettering")

    event = SimpleNamespace(message=SimpleNamespace(topic="crm.events", partition=0, offset=7))
    await handling.handle_until_done(handle, event)
    assert calls == [event] * 3


async def _no_wait(_seconds):
    return None


async def test_the_bridge_consumer_waits_at_the_broker_no_longer_than_configured():
    # faust fixes 1,500 ms; the local broker waits all of it whenever a fetch finds nothing.
    from sync_bridge.app import app, settings

    thread = app.consumer._new_consumer_thread()
    consumer = thread._create_worker_consumer(app.transport)
    assert settings.fetch_max_wait_ms == 50
    assert consumer._fetch_max_wait_ms == 50  # what aiokafka hands its fetcher when it starts
