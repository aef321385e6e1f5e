import uuid

import httpx
import pytest

from crm_service.bootstrap import bootstrap as crm_bootstrap
from crm_service.config import CrmSettings
from ecm_service.adapters import tables as ecm_tables
from ecm_service.bootstrap import bootstrap as ecm_bootstrap
from ecm_service.config import EcmSettings
from ecm_service.entrypoints.app import create_app as create_ecm_app
from infra.users import upsert_user
from tests.support.rights_matrix import ECM_ROLES

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


@pytest.fixture
async def ecm_app(backend, databases, broker, tmp_path):
    """The ECM's real app (HTTP in process) with a user of every role: the client, each
    role's token, and the app's container."""
    app = create_ecm_app(EcmSettings(database_url=databases.url("ecm", backend), kafka_bootstrap_servers=broker,
                                     content_dir=tmp_path / "content", imports_dir=tmp_path / "imports"))
    container = app.state.container
    tokens = {}
    for role in ECM_ROLES:
        tokens[role] = f"token-{role}-{uuid.uuid4().hex}"
        await upsert_user(container.session_factory, ecm_tables.users, name=f"{role}-user", role=role,
                          token=tokens[role])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ecm") as client:
        yield client, tokens, container
    await container.engine.dispose()
