"""Schemathesis against both services' `/openapi.json`, authenticated as several roles,
on the real processes, on SQLite and on PostgreSQL: no 5xx, and no response that breaks its own documented schema.
A fixed seed keeps each run's generated cases the same; a failure prints schemathesis'
report with the request that broke it. Two runs go side by side, so the services also
meet two clients at once, as they do in use: that is how the version uploads' race was
found (README, Reliability)."""

from __future__ import annotations

import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.conftest import running_system

ST = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "st"
SEED = "20261122"
ROLES = [
    ("ecm", "ecm-admin"), ("ecm", "legal-lena"), ("ecm", "steward-stas"),
    ("crm", "crm-admin"), ("crm", "sales-anna"), ("crm", "crm-auditor"),
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def system(request, tmp_path_factory):
    # Both backends: PostgreSQL refuses what SQLite stores (a NUL in text, a value longer
    # than its column), and those were 500s that only a run against it showed.
    yield from running_system(tmp_path_factory, request.param)


def _fuzz(base: str, token: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ST), "run", f"{base}/openapi.json", "-H", f"Authorization: Bearer {token}",
         "--checks", "not_a_server_error,response_schema_conformance", "--max-examples", "15",
         "--phases", "examples,fuzzing", "--seed", SEED, "--no-color"],
        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fuzz_runs(request, system, api) -> dict[tuple[str, str], Future]:
    """The selected runs on this backend, started together and run two at a time: each
    `st` process keeps about one core busy generating cases and checking answers, the
    services far less, so two of them share the machine's two cores where one after the
    other left a core idle. Each test waits for its own run and reports it."""
    selected = dict.fromkeys((item.callspec.params["service"], item.callspec.params["user"])
                             for item in request.session.items if item.module is request.module)
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {(service, user): pool.submit(_fuzz, system.ecm_url if service == "ecm" else system.crm_url,
                                             api.tokens[user])
                for service, user in selected}
        yield runs
        for run in runs.values():
            run.cancel()


@pytest.mark.parametrize("service, user", ROLES)
def test_no_server_errors_and_responses_match_their_schema(fuzz_runs, service, user):
    done = fuzz_runs[(service, user)].result()
    summary = "\n".join(done.stdout.splitlines()[-120:])
    assert done.returncode == 0, summary
    assert " passed" in summary and "generated" in summary
