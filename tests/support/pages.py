"""Helpers for the page tests: a page that refreshes until a cell says what is expected,
and a role's menu with what each of its links answers."""

from __future__ import annotations

import re
import time

import httpx


def reload_until(page, locator, text: str, *, exact: bool = False, timeout: float = 60.0) -> None:
    """Reloads the page until `locator`'s text contains `text` (is it, with `exact`): a
    background job, or the other system, has moved on; the caller then asserts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = locator.first.inner_text() if locator.count() else ""
        if (shown == text) if exact else (text in shown):
            return
        time.sleep(0.5)
        page.reload()


def menu_of(base_url: str, token: str) -> tuple[list[str], dict[str, int]]:
    """Logs in with the token; the menu's links on the home page, and each one's status."""
    with httpx.Client(base_url=base_url) as client:
        client.post("/ui/login", data={"token": token})
        home = client.get("/ui/", follow_redirects=True)
        assert home.status_code == 200, home.text
        menu = re.findall(r'<a href="(/ui/[^"]+)"', home.text.split("</header>")[0])
        return menu, {path: client.get(path).status_code for path in menu}
