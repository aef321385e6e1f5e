import pytest

from crm_service.bootstrap import bootstrap as crm_bootstrap
from crm_service.config import CrmSettings
from ecm_service.bootstrap import bootstrap as ecm_bootstrap
from ecm_service.config import EcmSettings

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


async def _container(bootstrap, settings, databases):
    """A service's real wiring on a fresh database, its producer started; the database is
    dropped in the background once the test is done with it."""
    container = bootstrap(settings)
    await container.producer.start()
    yield container
    await container.producer.stop()
    await container.engine.dispose()
    databases.release(settings.database_url)


@pytest.fixture
async def crm(backend, databases, broker, tmp_path):
    async for container in _container(crm_bootstrap, CrmSettings(
            database_url=databases.url("crm", backend), kafka_bootstrap_servers=broker,
            files_dir=tmp_path / "crm-files"), databases):
        yield container


@pytest.fixture
async def ecm(backend, databases, broker, tmp_path):
    async for container in _container(ecm_bootstrap, EcmSettings(
            database_url=databases.url("ecm", backend), kafka_bootstrap_servers=broker,
            content_dir=tmp_path / "ecm-content", imports_dir=tmp_path / "imports"), databases):
        yield container
