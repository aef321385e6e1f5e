"""The whole system as separate OS processes, started by the same launcher `make run`
uses, on SQLite files or on PostgreSQL."""

from __future__ import annotations

import os

import httpx
import pytest

from deploy.broker import free_port
from deploy.local_run import LauncherSettings, LocalSystem
from tests.support.databases import create_pg_database, drop_pg_database


class Api:
    """Calls the public HTTP APIs as a named demo user."""

    def __init__(self, system: LocalSystem):
        self.system = system
        self.tokens = {u["name"]: u["token"] for u in system.users}

    def _call(self, base: str, user: str, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[user]}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{base}{path}", headers=headers, timeout=30, **kwargs)

    def crm(self, user: str, method: str, path: str, **kwargs) -> httpx.Response:
        return self._call(self.system.crm_url, user, method, path, **kwargs)

    def ecm(self, user: str, method: str, path: str, **kwargs) -> httpx.Response:
        return self._call(self.system.ecm_url, user, method, path, **kwargs)


def start_system(tmp_path_factory, backend: str, extra_env: dict | None = None) -> tuple[LocalSystem, list[str]]:
    var = tmp_path_factory.mktemp(f"system-{backend}")
    databases = []
    urls = {}
    if backend == "postgresql":
        for service in ("crm", "ecm"):
            name, url = create_pg_database(f"e2e_{service}")
            databases.append(name)
            urls[f"{service}_database_url"] = url
    settings = LauncherSettings(
        var_dir=var, crm_port=free_port(), ecm_port=free_port(), bridge_web_port=free_port(),
        broker_port=free_port(),  # not the launcher's 9092 first: the other test worker may be taking it
        kafka_bootstrap_servers=os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS"), **urls,
    )
    system = LocalSystem(settings, log_dir=var / "logs", extra_env={"LOG_JSON": "true", **(extra_env or {})})
    try:
        system.start(timeout=90)
    except Exception:
        system.stop()
        raise
    return system, databases


def running_system(tmp_path_factory, backend: str, extra_env: dict | None = None):
    """Generator for a module-scoped `system` fixture: started, yielded, stopped, cleaned."""
    system, databases = start_system(tmp_path_factory, backend, extra_env)
    yield system
    system.stop()
    for name in databases:
        drop_pg_database(name)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def system(request, tmp_path_factory):
    """Modules that need one backend or other settings override this fixture."""
    yield from running_system(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def api(system):
    return Api(system)


CHROMIUM = "/usr/bin/chromium"  # Debian's Chromium; never `playwright install`


@pytest.fixture(scope="module")
def browser(system):
    """Real Chromium for the page tests. It depends on `system` so that the system starts
    first: Playwright's sync API keeps an event loop running in this thread until it
    stops, and the system fixture creates its databases with asyncio.run."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15000)
    yield page
    context.close()
