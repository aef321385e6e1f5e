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
