import os

import pytest

from tests.support.databases import DatabaseFactory
from tests.support.kafka import LocalBroker

_containers: list = []


def pytest_configure(config):
    # once, in the process that starts the workers (`make test` runs pytest-xdist): they
    # inherit its environment, where start_containers leaves the addresses
    if os.environ.get("TEST_WITH_TESTCONTAINERS") == "1" and not hasattr(config, "workerinput"):
        from tests.support.containers import start_containers

        _containers.extend(start_containers())


def pytest_unconfigure(config):
    for container in _containers:
        container.stop()


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    local = LocalBroker(tmp_path_factory.mktemp("broker"))
    yield local.bootstrap
    local.stop()


@pytest.fixture(scope="session")
def databases(tmp_path_factory):
    factory = DatabaseFactory(tmp_path_factory.mktemp("db"))
    yield factory
    factory.cleanup()
