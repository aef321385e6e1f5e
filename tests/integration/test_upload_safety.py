"""Uploads on both services, through the real apps on both backends: an empty file, a
file over the limit and a declared sha256 that does not match get a clear 4xx and leave
nothing behind; file names that try to climb out of the store are shown as their last
component and every byte lands inside the content store, named by its hash."""

import hashlib
import uuid
from pathlib import Path

import httpx
import pytest

from crm_service.adapters import tables as crm_tables
from crm_service.config import CrmSettings
from crm_service.entrypoints.app import create_app as create_crm
from ecm_service.adapters import tables as ecm_tables
from ecm_service.config import EcmSettings
from ecm_service.entrypoints.app import create_app as create_ecm
from infra.users import upsert_user

LIMIT = 4096
TRAVERSALS = ["../../../../tmp/escaped.txt", "..\\..\\escaped.txt", "/etc/passwd", "..", "a/../../b.txt"]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.fixture
async def ecm_client(backend, databases, broker, tmp_path):
    settings = EcmSettings(database_url=databases.url("ecm", backend), kafka_bootstrap_servers=broker,
                           content_dir=tmp_path / "content", imports_dir=tmp_path / "imports",
                           max_upload_bytes=LIMIT)
    app = create_ecm(settings)
    token = f"legal-{uuid.uuid4().hex}"
    await upsert_user(app.state.container.session_factory, ecm_tables.users, name="lena", role="legal", token=token)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ecm",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        yield client, tmp_path
    await app.state.container.engine.dispose()


@pytest.fixture
async def crm_client(backend, databases, broker, tmp_path):
    settings = CrmSettings(database_url=databases.url("crm", backend), kafka_bootstrap_servers=broker,
                           files_dir=tmp_path / "files", imports_dir=tmp_path / "imports", max_upload_bytes=LIMIT)
    app = create_crm(settings)
    token = f"sales-{uuid.uuid4().hex}"
    await upsert_user(app.state.container.session_factory, crm_tables.users, name="anna", role="sales", token=token)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://crm",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        org = (await client.post("/api/organizations", json={"name": "Вектор"})).json()
        deal = (await client.post("/api/deals", json={"organization_id": org["id"], "title": "Supply"})).json()
        yield client, tmp_path, deal["id"]
    await app.state.container.engine.dispose()


async def test_ecm_refuses_bad_uploads_clearly_and_keeps_nothing(ecm_client):
    client, root = ecm_client
    form = {"doc_type": "contract", "title": "t"}
    empty = await client.post("/api/documents", data=form, files={"file": ("a.pdf", b"")})
    assert empty.status_code == 422 and "empty" in empty.text
    big = await client.post("/api/documents", data=form, files={"file": ("a.pdf", b"x" * (LIMIT + 1))})
    assert big.status_code == 413 and str(LIMIT) in big.text
    lying = await client.post("/api/documents", data={**form, "sha256": "0" * 64},
                              files={"file": ("a.pdf", b"real bytes")})
    assert lying.status_code == 422 and "does not match" in lying.text
    malformed = await client.post("/api/documents", data={**form, "sha256": "../x"},
                                  files={"file": ("a.pdf", b"real bytes")})
    assert malformed.status_code == 422
    assert (await client.get("/api/documents")).json() == []
    assert files_under(root / "content") == set()  # no partial or orphan files


async def test_ecm_file_names_never_leave_the_content_store(ecm_client):
    client, root = ecm_client
    before = files_under(root.parent)
    for i, name in enumerate(TRAVERSALS):
        body = f"document {i}".encode()
        stored = await client.post("/api/documents", data={"doc_type": "contract", "title": f"t{i}",
                                                           "sha256": hashlib.sha256(body).hexdigest()},
                                   files={"file": (name, body)})
        assert stored.status_code == 201, stored.text
        document = (await client.get(f"/api/documents/{stored.json()['id']}")).json()
        shown = document["versions"][0]["filename"]
        assert "/" not in shown and "\\" not in shown and shown not in ("", ".", "..")
        download = await client.get(f"/api/documents/{stored.json()['id']}/content")
        assert download.content == body and ".." not in download.headers["content-disposition"]
    new = files_under(root.parent) - before
    assert new and all((root / "content") in p.parents for p in new)
    assert not Path("/tmp/escaped.txt").exists()


async def test_crm_refuses_bad_uploads_and_file_names_stay_names(crm_client):
    client, root, deal_id = crm_client
    url = f"/api/deals/{deal_id}/documents"
    empty = await client.post(url, files={"file": ("a.pdf", b"")})
    assert empty.status_code == 422 and "empty" in empty.text
    big = await client.post(url, files={"file": ("a.pdf", b"x" * (LIMIT + 1))})
    assert big.status_code == 413
    assert files_under(root / "files") == set()
    for name in TRAVERSALS:
        stored = await client.post(url, files={"file": (name, b"contract text")})
        assert stored.status_code == 201, stored.text
        assert "/" not in stored.json()["filename"] and "\\" not in stored.json()["filename"]
    assert all((root / "files") in p.parents for p in files_under(root))
    assert not Path("/tmp/escaped.txt").exists()
