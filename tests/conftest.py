import pytest

from tests.support.databases import DatabaseFactory
from tests.support.kafka import LocalBroker


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
