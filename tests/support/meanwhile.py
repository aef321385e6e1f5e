"""Work at the same moment, made to happen: one transaction held at a chosen point while
another one runs."""

from __future__ import annotations

import asyncio


def start_meanwhile(monkeypatch, owner, name: str, start, *, hold: float = 1.0) -> list[asyncio.Task]:
    """Patches `owner.name` (a class's method or a module's function): its first call
    starts `start()` as a task and gives it up to `hold` seconds (to reach a lock the
    caller's transaction holds, typically) before going on. Returns the list the task is
    put in. On a slow machine the task may reach its point later, and the two then run
    one after the other: the test passes without the race, never fails because of it."""
    started: list[asyncio.Task] = []
    original = getattr(owner, name)

    async def patched(*args, **kwargs):
        if not started:
            started.append(asyncio.ensure_future(start()))
            await asyncio.wait(started, timeout=hold)
        return await original(*args, **kwargs)

    monkeypatch.setattr(owner, name, patched)
    return started
