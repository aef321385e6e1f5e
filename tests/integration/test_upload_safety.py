"""Uploads on both services, through the real apps on both backends: an empty file, a
file over the limit and a declared sha256 that does not match get a clear 4xx and leave
nothing behind; file names that try to climb out of the store are shown as their last
component and every byte lands inside the content store, named by its hash. The batch
calls the bridge uses (the ECM's upload of many files, the CRM's contents of many
documents) answer as the single calls would, file by file."""

import hashlib
import json
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
    # A NUL in a multipart text field, or in the batch's JSON manifest: PostgreSQL cannot
    # store it, and the driver's error was a 500 (schemathesis found it there).
    nul = await client.post("/api/documents", data={**form, "title": "t\x00"}, files={"file": ("a.pdf", b"x")})
    assert nul.status_code == 422 and "NUL" in nul.text
    manifest = json.dumps([{"external_ref": "crm:1", "doc_type": "contract", "title": "t\u0000"}])
    nul_batch = await client.post("/api/documents/batch", data={"manifest": manifest},
                                  files=[("files", ("a.pdf", b"x"))])
    assert nul_batch.status_code == 422 and "NUL" in nul_batch.text
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


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


async def _batch(client, items):
    """items: (external ref, file name, bytes, declared sha256)"""
    manifest = [{"external_ref": ref, "doc_type": "contract", "title": name, "sha256": sha}
                for ref, name, _, sha in items]
    return await client.post("/api/documents/batch", data={"manifest": json.dumps(manifest)},
                             files=[("files", (name, body, "text/plain")) for _, name, body, _ in items])


async def test_ecm_batch_upload_answers_each_file_as_the_single_upload_would(ecm_client):
    client, root = ecm_client
    ref = f"crm:{uuid.uuid4().hex[:8]}"
    first = await _batch(client, [
        (f"{ref}-a", "a.txt", b"alpha", _sha(b"alpha")),
        (f"{ref}-b", "../../b.txt", b"beta", "0" * 64),  # not its declared hash
        (f"{ref}-c", "c.txt", b"", None),  # empty
        (f"{ref}-d", "d.txt", b"delta", _sha(b"delta")),
    ])
    assert first.status_code == 200, first.text
    a, b, c, d = first.json()
    assert a["created"] and a["version_no"] == 1 and a["sha256"] == _sha(b"alpha") and a["error"] is None
    assert b["id"] is None and "does not match" in b["error"]
    assert c["id"] is None and "empty" in c["error"]
    assert d["created"] and d["id"] != a["id"]
    again = await _batch(client, [
        (f"{ref}-a", "a.txt", b"alpha", _sha(b"alpha")),  # a retried transfer: the same version
        (f"{ref}-d", "d.txt", b"delta 2", _sha(b"delta 2")),  # new bytes: a second version
        (f"{ref}-e", "e.txt", b"echo", None),
        (f"{ref}-e", "e.txt", b"echo", None),  # twice in one batch: stored once
    ])
    assert again.status_code == 200, again.text
    a2, d2, e1, e2 = again.json()
    assert (a2["id"], a2["version_id"], a2["created"]) == (a["id"], a["version_id"], False)
    assert (d2["id"], d2["version_no"], d2["created"]) == (d["id"], 2, True)
    assert e1["created"] and (e2["id"], e2["version_id"], e2["created"]) == (e1["id"], e1["version_id"], False)
    listed = (await client.get("/api/documents", params={"external_ref": f"{ref}-a"})).json()
    assert [doc["id"] for doc in listed] == [a["id"]]
    document = (await client.get(f"/api/documents/{d['id']}")).json()
    assert [v["sha256"] for v in document["versions"]] == [_sha(b"delta"), _sha(b"delta 2")]
    assert {p.name for p in files_under(root / "content")} == {_sha(x) for x in (b"alpha", b"delta", b"delta 2",
                                                                                  b"echo")}


async def test_the_same_batch_sent_several_times_at_once_stores_each_file_once(ecm_client):
    """A transfer retried while its first attempt still runs: batches with the same new
    refs at the same moment. The later ones broke the ref's key and answered 500; now
    each runs again and answers the document the first one stored."""
    import asyncio

    client, root = ecm_client
    ref = f"crm:{uuid.uuid4().hex[:8]}"
    items = [(f"{ref}-{i}", f"{i}.txt", f"file {i} {ref}".encode(), None) for i in range(5)]
    answers = await asyncio.gather(*(_batch(client, items) for _ in range(4)))
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    stored = [[(item["id"], item["version_id"]) for item in a.json()] for a in answers]
    assert all(s == stored[0] for s in stored) and len({i for i, _ in stored[0]}) == 5
    assert sum(item["created"] for a in answers for item in a.json()) == 5
    for i in range(5):
        listed = (await client.get("/api/documents", params={"external_ref": f"{ref}-{i}"})).json()
        assert [doc["id"] for doc in listed] == [stored[0][i][0]]


async def test_ecm_batch_upload_refuses_a_malformed_or_oversized_batch_whole(ecm_client):
    client, root = ecm_client
    files = [("files", ("a.txt", b"alpha", "text/plain"))]
    two_items = json.dumps([{"external_ref": "crm:1", "doc_type": "contract", "title": "a"}] * 2)
    mismatch = await client.post("/api/documents/batch", data={"manifest": two_items}, files=files)
    assert mismatch.status_code == 422 and "2 items for 1 files" in mismatch.text
    garbage = await client.post("/api/documents/batch", data={"manifest": "[{"}, files=files)
    assert garbage.status_code == 422 and "manifest" in garbage.text
    no_ref = json.dumps([{"external_ref": "no colon", "doc_type": "contract", "title": "a"}])
    bad_ref = await client.post("/api/documents/batch", data={"manifest": no_ref}, files=files)
    assert bad_ref.status_code == 422 and "external_ref" in bad_ref.text
    one_item = json.dumps([{"external_ref": "crm:1", "doc_type": "contract", "title": "a"}])
    big = await client.post("/api/documents/batch", data={"manifest": one_item},
                            files=[("files", ("a.txt", b"x" * LIMIT, "text/plain"))])
    assert big.status_code == 413 and str(LIMIT) in big.text
    assert files_under(root / "content") == set()
    assert (await client.get("/api/documents")).json() == []


async def test_crm_hands_out_many_documents_in_one_answer(crm_client):
    client, root, deal_id = crm_client
    url = f"/api/deals/{deal_id}/documents"
    bodies = [b"first contract", b"second, longer contract", b"x" * 3000, b"y" * 3000]
    docs = [(await client.post(url, files={"file": (f"{i}.txt", body)})).json() for i, body in enumerate(bodies)]
    got = await client.post("/api/documents/contents", json={"ids": [docs[1]["id"], docs[0]["id"]]})
    assert got.status_code == 200, got.text
    assert got.content == bodies[1] + bodies[0]
    assert got.headers["X-Content-Sizes"] == f"{len(bodies[1])},{len(bodies[0])}"
    assert got.headers["X-Content-SHA256"] == f"{_sha(bodies[1])},{_sha(bodies[0])}"
    missing = await client.post("/api/documents/contents", json={"ids": [docs[0]["id"], "no-such-document"]})
    assert missing.status_code == 404 and "no-such-document" in missing.text
    too_much = await client.post("/api/documents/contents", json={"ids": [docs[2]["id"], docs[3]["id"]]})
    assert too_much.status_code == 413 and "fewer" in too_much.text
    empty = await client.post("/api/documents/contents", json={"ids": []})
    assert empty.status_code == 422


async def test_a_refused_bulk_load_upload_says_why_in_the_list_and_keeps_no_file(backend, databases, broker,
                                                                                  tmp_path):
    # Its job row is made before the file arrives: an empty or oversize upload left it
    # `running` for good, and the list (and the steward's page) would show it so.
    settings = EcmSettings(database_url=databases.url("ecm", backend), kafka_bootstrap_servers=broker,
                           content_dir=tmp_path / "content", imports_dir=tmp_path / "imports", max_import_bytes=64)
    app = create_ecm(settings)
    token = f"steward-{uuid.uuid4().hex}"
    await upsert_user(app.state.container.session_factory, ecm_tables.users, name=f"stas-{token[-6:]}",
                      role="steward", token=token)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ecm",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        empty = await client.post("/api/counterparties/bulk-loads", files={"file": ("e.csv", b"")})
        big = await client.post("/api/counterparties/bulk-loads", files={"file": ("b.csv", b"x" * 65)})
        assert (empty.status_code, big.status_code) == (422, 413)
        listed = {load["file_name"]: load for load in (await client.get("/api/counterparties/bulk-loads")).json()}
    await app.state.container.engine.dispose()
    assert (listed["e.csv"]["status"], listed["e.csv"]["error"]) == ("failed", "the file is empty")
    assert listed["b.csv"]["status"] == "failed" and "64" in listed["b.csv"]["error"]
    assert files_under(tmp_path / "imports") == set()


class _FullDisk:
    """A file in the content store on a disk with no space left: writing fails as the
    kernel's ENOSPC does."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, _chunk):
        import errno
        import os

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_an_upload_to_a_full_disk_is_told_so_and_leaves_nothing(ecm_client, crm_client, monkeypatch):
    """507 with a sentence, where it was a 500; the partial file is gone (the store's
    files are as before), and the same upload succeeds once there is space again."""
    from prometheus_client import REGISTRY

    from infra import content_store

    def refused() -> dict:
        return {service: REGISTRY.get_sample_value("service_requests_refused_total",
                                                   {"service": service, "reason": "storage_full"})
                for service in ("crm", "ecm")}

    (ecm, ecm_root), (crm, crm_root, deal_id) = ecm_client, crm_client
    before = files_under(ecm_root) | files_under(crm_root)
    counted = refused()
    real_fdopen = content_store.os.fdopen
    monkeypatch.setattr(content_store.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode)))
    single = await ecm.post("/api/documents", data={"doc_type": "contract", "title": "t"},
                            files={"file": ("a.pdf", b"contract bytes")})
    manifest = json.dumps([{"external_ref": "crm:full-1", "doc_type": "contract", "title": "t",
                            "sha256": hashlib.sha256(b"contract bytes").hexdigest()}])
    batch = await ecm.post("/api/documents/batch", data={"manifest": manifest},
                           files=[("files", ("a.pdf", b"contract bytes"))])
    crm_upload = await crm.post(f"/api/deals/{deal_id}/documents", data={"doc_type": "contract"},
                                files={"file": ("a.pdf", b"contract bytes")})
    for answer in (single, batch, crm_upload):
        assert answer.status_code == 507, answer.text
        assert answer.json() == {"detail": "no space left to store the file; nothing was stored"}
    assert files_under(ecm_root) | files_under(crm_root) == before
    assert {service: n - counted[service] for service, n in refused().items()} == {"crm": 1, "ecm": 2}

    monkeypatch.setattr(content_store.os, "fdopen", real_fdopen)
    again = await ecm.post("/api/documents", data={"doc_type": "contract", "title": "t"},
                           files={"file": ("a.pdf", b"contract bytes")})
    assert again.status_code == 201
