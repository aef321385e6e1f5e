import time


def wait_until(predicate, *, timeout: float = 60.0, interval: float = 0.25, message: str = "condition"):
    """Polls until predicate() returns a truthy value, and returns it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}; last value: {last!r}")


async def async_wait_until(predicate, *, timeout: float = 60.0, interval: float = 0.25, message: str = "condition"):
    import asyncio

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}; last value: {last!r}")
