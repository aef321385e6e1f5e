"""Disposal after retention on both backends: held documents stay, shared content stays,
the disposal is recorded, a dry run changes nothing, a hold put at the same moment is
never both accepted and ignored."""

import asyncio
import io
import os
import time
from datetime import datetime, timedelta, timezone

from ecm_service.adapters.history import verify_chain
from ecm_service.adapters.repositories import ApprovalRepository
from ecm_service.service_layer import documents
from ecm_service.service_layer.documents import store_version


async def dispose(ecm, now: datetime, *, dry_run: bool) -> list[dict]:
    return await documents.dispose_expired(ecm.uow(), ecm.content_store, now=now, actor="test", dry_run=dry_run,
                                           retention=ecm.retention)


def written_long_ago(path) -> None:
    """A document past its retention had its bytes written years ago; a disposal keeps
    bytes written within the last hour (an upload of them may be on its way)."""
    then = time.time() - 2 * documents.RECENTLY_WRITTEN_SECONDS
    os.utime(path, (then, then))


async def _store(ecm, content: bytes, doc_type: str):
    sha, size = ecm.content_store.put(io.BytesIO(content), max_bytes=10**6)
    written_long_ago(ecm.content_store.path_for(sha))
    doc, _, _ = await store_version(ecm.uow(), user_id="u", doc_type=doc_type, title="t", filename="f.txt",
                                    content_type="text/plain", sha256=sha, size=size, external_ref=None,
                                    retention=ecm.retention)
    return doc, sha


def _arrived(ecm, ref, content: bytes, *, long_ago: bool = True) -> documents.Arrived:
    sha, size = ecm.content_store.put(io.BytesIO(content), max_bytes=10**6)
    if long_ago:
        written_long_ago(ecm.content_store.path_for(sha))
    return documents.Arrived(external_ref=ref, doc_type="proposal", title="КП", filename="kp.pdf",
                             content_type="application/pdf", sha256=sha, size=size)


async def test_disposal_respects_holds_and_shared_content(ecm):
    now = datetime.now(timezone.utc)
    held, _ = await _store(ecm, b"held contract", "contract")
    expired, shared_sha = await _store(ecm, b"shared bytes", "proposal")
    keeper, _ = await _store(ecm, b"shared bytes", "contract")  # same bytes, another document
    lone, lone_sha = await _store(ecm, b"lone bytes", "proposal")
    assert expired["retain_until"] - now > timedelta(days=3 * 365 - 2)  # proposal: 3 years
    await documents.set_legal_hold(ecm.uow(), document_id=held["id"], hold=True, user_id="legal",
                                   reason="litigation 12/2026")

    in_four_years = now + timedelta(days=4 * 366)
    preview = await dispose(ecm, in_four_years, dry_run=True)
    assert {r["id"]: (r["eligible"], r["disposed"]) for r in preview} == {
        expired["id"]: (True, False), lone["id"]: (True, False)}
    assert ecm.content_store.path_for(lone_sha).exists()

    done = await dispose(ecm, now + timedelta(days=6 * 366), dry_run=False)
    outcome = {r["id"]: (r["disposed"], r["reason"]) for r in done}
    assert outcome[held["id"]] == (False, "under legal hold")
    assert outcome[expired["id"]] == (True, None) and outcome[lone["id"]] == (True, None)
    assert outcome[keeper["id"]] == (True, None)  # its 5 years ran out too by then
    assert not ecm.content_store.path_for(lone_sha).exists()
    async with ecm.uow() as uow:
        history = await uow.history.of("document", lone["id"])
        assert [h["action"] for h in history] == ["version_stored", "disposed"]
        assert (await uow.documents.get(held["id"]))["disposed_at"] is None


async def test_shared_content_survives_while_another_document_needs_it(ecm):
    now = datetime.now(timezone.utc)
    expired, sha = await _store(ecm, b"bytes in two documents", "proposal")
    await _store(ecm, b"bytes in two documents", "contract")
    await dispose(ecm, now + timedelta(days=4 * 366), dry_run=False)
    assert ecm.content_store.path_for(sha).exists()


async def test_a_hold_put_as_the_disposal_runs_is_either_kept_or_refused(ecm, monkeypatch):
    """Legal staff put a hold on a document while an admin's disposal is deciding about it.
    The disposal used to go on from what it had read: the document ended up disposed of,
    its bytes deleted, under a hold that had been accepted. Here the hold is sent right
    after the disposal has read the document, and given a second: now it waits for the
    disposal and is refused on the disposed document (410 in the API)."""
    later = datetime.now(timezone.utc) + timedelta(days=4 * 366)
    doc, sha = await _store(ecm, b"a proposal in dispute", "proposal")
    holds: list[asyncio.Task] = []
    in_flight = ApprovalRepository.in_flight_for_document

    async def hold_meanwhile(self, document_id):
        holds.append(asyncio.ensure_future(documents.set_legal_hold(
            ecm.uow(), document_id=document_id, hold=True, user_id="legal", reason="litigation 12/2026")))
        await asyncio.wait(holds, timeout=1.0)
        return await in_flight(self, document_id)

    monkeypatch.setattr(ApprovalRepository, "in_flight_for_document", hold_meanwhile)
    done = await dispose(ecm, later, dry_run=False)
    [hold] = await asyncio.gather(*holds, return_exceptions=True)
    async with ecm.uow() as uow:
        stored = await uow.documents.get(doc["id"])
    assert [(r["id"], r["disposed"]) for r in done] == [(doc["id"], True)]
    assert isinstance(hold, documents.DocumentGone) and not stored["legal_hold"]
    assert not ecm.content_store.path_for(sha).exists()


async def test_two_disposals_at_the_same_moment_dispose_of_a_document_once(ecm):
    later = datetime.now(timezone.utc) + timedelta(days=4 * 366)
    stored = [await _store(ecm, f"proposal {i}".encode(), "proposal") for i in range(4)]
    runs = await asyncio.gather(*(dispose(ecm, later, dry_run=False) for _ in range(2)))
    assert sorted(r["id"] for run in runs for r in run if r["disposed"]) == sorted(d["id"] for d, _ in stored)
    async with ecm.uow() as uow:
        for doc, _ in stored:
            assert [h["action"] for h in await uow.history.of("document", doc["id"])] == [
                "version_stored", "disposed"]


async def test_a_disposal_that_fails_to_commit_deletes_no_bytes(ecm, monkeypatch):
    """The disposal deleted a document's bytes before its transaction committed: a commit
    that failed (a lost connection, a deadlock broken by PostgreSQL) left the document
    live, not disposed, with its bytes gone. They now go once the disposal has committed."""
    from ecm_service.service_layer.unit_of_work import EcmUnitOfWork

    later = datetime.now(timezone.utc) + timedelta(days=4 * 366)
    doc, sha = await _store(ecm, b"a proposal whose disposal fails", "proposal")

    async def lost_connection(self):
        raise ConnectionResetError("the database went away at commit")

    with monkeypatch.context() as patched:
        patched.setattr(EcmUnitOfWork, "commit", lost_connection)
        try:
            await dispose(ecm, later, dry_run=False)
        except ConnectionResetError:
            pass
    async with ecm.uow() as uow:
        assert (await uow.documents.get(doc["id"]))["disposed_at"] is None
    assert ecm.content_store.path_for(sha).exists()

    done = await dispose(ecm, later, dry_run=False)
    assert [(r["id"], r["disposed"]) for r in done] == [(doc["id"], True)]
    assert not ecm.content_store.path_for(sha).exists()


async def test_a_document_sent_again_after_its_disposal_is_stored_as_a_new_one(ecm):
    """A rep asks for approval of a CRM document whose ECM copy was disposed of after its
    retention. The transfer under the same ref used to answer the disposed document (the
    same bytes: its version, content gone) or add a version to it, and the approval went on
    with a document that answers 410. The bytes that came again now make a new document,
    and the ref moves to it; the disposed one stays disposed, with its history."""
    from schemas.common import ExternalRef

    later = datetime.now(timezone.utc) + timedelta(days=4 * 366)
    ref, other_ref = ExternalRef(system="crm", id="doc-1"), ExternalRef(system="crm", id="doc-2")

    def arrived(ref, content: bytes) -> documents.Arrived:
        return _arrived(ecm, ref, content, long_ago=False)

    [(first, _, _), (second, _, _)] = await documents.store_many(
        ecm.uow, user_id="bridge", items=[arrived(ref, b"the proposal"), arrived(other_ref, b"another proposal")],
        retention=ecm.retention)
    done = await dispose(ecm, later, dry_run=False)
    assert {r["id"] for r in done if r["disposed"]} == {first["id"], second["id"]}

    # The same bytes again, through the batch; other bytes, one by one.
    [(again, version, created)] = await documents.store_many(
        ecm.uow, user_id="bridge", items=[arrived(ref, b"the proposal")], retention=ecm.retention)
    changed = arrived(other_ref, b"another proposal, changed")
    renewed, _, renewed_created = await store_version(
        ecm.uow(), user_id="bridge", doc_type="proposal", title="КП", filename="kp.pdf",
        content_type="application/pdf", sha256=changed.sha256, size=changed.size, external_ref=other_ref,
        retention=ecm.retention)

    assert created and again["id"] != first["id"] and version["version_no"] == 1
    assert renewed_created and renewed["id"] != second["id"]
    assert ecm.content_store.path_for(version["sha256"]).exists()
    async with ecm.uow() as uow:
        assert await uow.external_refs.find("document", ref) == again["id"]
        assert await uow.external_refs.find("document", other_ref) == renewed["id"]
        assert (await uow.documents.get(again["id"]))["disposed_at"] is None
        assert (await uow.documents.get(first["id"]))["disposed_at"] is not None
        assert [len(await uow.documents.versions(d)) for d in (first["id"], second["id"], renewed["id"])] == [1, 1, 1]
        [stored] = await uow.history.of("document", again["id"])
        assert stored["data"]["replaces_disposed"] == first["id"]
        assert [h["action"] for h in await uow.history.of("document", first["id"])] == ["version_stored", "disposed"]


async def test_retention_runs_from_a_documents_latest_version_and_its_latest_approval(ecm):
    """Two proposals (3 years) stored two and a half years ago: one gets a new version
    today, the other an approval that ends today. Retention ran from creation only, so a
    disposal half a year on destroyed both, the second right after it had been approved.
    Now each is kept until three years after its last use, and that date is stored."""
    from sqlalchemy import update

    from ecm_service.adapters import tables
    from ecm_service.domain.approval import APPROVED
    from tests.integration.test_approvals import decide, person, start

    now = datetime.now(timezone.utc)
    then = now - timedelta(days=913)  # two and a half years ago
    versioned, _ = await _store(ecm, b"a proposal from back then", "proposal")
    approval_id, approved = await start(ecm, doc_type="proposal")
    for role in ("legal", "director"):
        await decide(ecm, approval_id, await person(ecm, f"{role}-1", role))
    async with ecm.uow() as uow:
        assert (await uow.approvals.get(approval_id)).status == APPROVED
    async with ecm.session_factory() as session, session.begin():  # both made back then
        for doc in (versioned, approved):
            await session.execute(update(tables.documents).where(tables.documents.c.id == doc["id"]).values(
                created_at=then, retain_until=then.replace(year=then.year + 3)))
            await session.execute(update(tables.document_versions).where(
                tables.document_versions.c.document_id == doc["id"]).values(created_at=then))
    sha, size = ecm.content_store.put(io.BytesIO(b"the proposal, revised"), max_bytes=10**6)
    await store_version(ecm.uow(), user_id="u", doc_type="proposal", title="t", filename="f.txt",
                        content_type="text/plain", sha256=sha, size=size, external_ref=None,
                        document_id=versioned["id"], retention=ecm.retention)

    in_a_year = now + timedelta(days=365)
    preview = await dispose(ecm, in_a_year, dry_run=True)
    done = await dispose(ecm, in_a_year, dry_run=False)
    for run in (preview, done):
        assert {r["id"]: (r["disposed"], r["reason"]) for r in run} == {
            versioned["id"]: (False, "retention has not run out"), approved["id"]: (False, "retention has not run out")}
        assert all(r["retain_until"] > now + timedelta(days=3 * 365 - 2) for r in run)
    async with ecm.uow() as uow:
        for doc in (versioned, approved):
            stored = await uow.documents.get(doc["id"])
            assert stored["disposed_at"] is None and stored["retain_until"] > now + timedelta(days=3 * 365 - 2)
            assert [h["action"] for h in await uow.history.of("document", doc["id"])][-1] == "retention_renewed"
    assert await dispose(ecm, in_a_year, dry_run=False) == []  # nothing past its renewed date now
    done = await dispose(ecm, now + timedelta(days=3 * 366 + 1), dry_run=False)
    assert {r["id"] for r in done if r["disposed"]} == {versioned["id"], approved["id"]}


async def test_bytes_uploaded_again_as_their_document_is_disposed_of_stay(ecm, monkeypatch):
    """A proposal past its retention is being disposed of while someone uploads the very
    same file as a new document: its bytes go into the store, then its transaction
    commits after the disposal has looked for other documents that need them. The
    disposal deleted the bytes, and the new document's version had none. Now bytes
    written again after the disposal looked are not deleted, nor are bytes written within
    the hour before (an orphan for verify-content if nothing comes to need them)."""
    from ecm_service.service_layer.unit_of_work import EcmUnitOfWork

    later = datetime.now(timezone.utc) + timedelta(days=4 * 366)
    same = b"the same commercial proposal"
    expired, sha = await _store(ecm, same, "proposal")
    real_commit = EcmUnitOfWork.commit

    async def upload_meanwhile(self):
        ecm.content_store.put(io.BytesIO(same), max_bytes=10**6)  # the upload's bytes, before its transaction
        await real_commit(self)

    with monkeypatch.context() as patched:
        patched.setattr(EcmUnitOfWork, "commit", upload_meanwhile)
        done = await dispose(ecm, later, dry_run=False)
    _, version, created = await store_version(
        ecm.uow(), user_id="u", doc_type="contract", title="t", filename="kp.txt", content_type="text/plain",
        sha256=sha, size=len(same), external_ref=None, retention=ecm.retention)
    assert [(r["id"], r["disposed"]) for r in done] == [(expired["id"], True)] and created
    assert ecm.content_store.verified_path(version["sha256"]).read_bytes() == same
    # The history tells what became of them: named as deleted by the disposal's entry,
    # then kept (before, it said only that they were deleted).
    async with ecm.uow() as uow:
        *_, disposal, kept = await uow.history.of("document", expired["id"])
    assert (disposal["action"], disposal["data"]["content_deleted"]) == ("disposed", [sha])
    assert (kept["action"], kept["data"]) == ("content_kept", {"content_kept": [sha], "because": "written_again"})
    assert done[0]["content_kept"] == [sha]

    # Bytes written within the hour before the disposal stay too, and its history says so.
    other, other_sha = await _store(ecm, b"a proposal re-uploaded an hour ago", "proposal")
    ecm.content_store.put(io.BytesIO(b"a proposal re-uploaded an hour ago"), max_bytes=10**6)
    await dispose(ecm, later, dry_run=False)
    assert ecm.content_store.path_for(other_sha).exists()
    async with ecm.uow() as uow:
        [*_, disposal] = await uow.history.of("document", other["id"])
    assert disposal["action"] == "disposed" and disposal["data"]["content_deleted"] == []
    assert disposal["data"]["content_kept_recently_written"] == [other_sha]
    async with ecm.uow() as uow:  # the disposal that kept them as recently written adds nothing
        assert [h["action"] for h in await uow.history.of("document", other["id"])][-1] == "disposed"
    async with ecm.session_factory() as session:
        assert (await verify_chain(session)).intact


async def _past_its_retention(ecm, document_id: str, now: datetime) -> None:
    from sqlalchemy import update

    from ecm_service.adapters import tables

    then = now - timedelta(days=3 * 366)  # stored three years ago, its retention ended yesterday
    async with ecm.session_factory() as session, session.begin():
        await session.execute(update(tables.documents).where(tables.documents.c.id == document_id).values(
            created_at=then, retain_until=now - timedelta(days=1)))
        await session.execute(update(tables.document_versions).where(
            tables.document_versions.c.document_id == document_id).values(created_at=then))


async def test_a_document_sent_again_as_its_retention_ends_keeps_it(ecm):
    """A rep sends for approval again a proposal whose ECM copy is past its retention, the
    same bytes. The transfer answers the document, and its retention now counts from then
    (stored, with the history saying why), once: the next transfer changes nothing. Before,
    the transfer answered the document as it was, and a disposal before the approval's
    start disposed of it from under that approval."""
    from schemas.common import ExternalRef

    ref = ExternalRef(system="crm", id="doc-sent-again")
    [(first, _, _)] = await documents.store_many(ecm.uow, user_id="bridge", items=[_arrived(ecm, ref, b"KP 2023")],
                                                 retention=ecm.retention)
    now = datetime.now(timezone.utc)
    await _past_its_retention(ecm, first["id"], now)
    for _ in range(2):
        [(again, version, created)] = await documents.store_many(
            ecm.uow, user_id="bridge", items=[_arrived(ecm, ref, b"KP 2023")], retention=ecm.retention)
        assert again["id"] == first["id"] and version["version_no"] == 1 and not created
    async with ecm.uow() as uow:
        stored = await uow.documents.get(first["id"])
        history = await uow.history.of("document", first["id"])
    years = ecm.retention.get("proposal", ecm.retention["default"])
    assert stored["retain_until"] > now + timedelta(days=365 * years - 2)
    assert [(h["action"], h["data"].get("because")) for h in history] == [
        ("version_stored", None), ("retention_renewed", "stored_again")]
    assert await dispose(ecm, now, dry_run=False) == []


async def test_a_document_sent_again_while_a_disposal_decides_about_it_is_never_answered_disposed(ecm, monkeypatch):
    """The disposal has read a proposal past its retention, and a transfer of the same
    bytes comes at that moment (a rep's approval request). The transfer used to read the
    document without its lock and answer it; the disposal then disposed of it, and the
    approval started on a document whose content was gone. Now the transfer waits for the
    disposal and stores the bytes as a new document (the ref moves to it)."""
    from schemas.common import ExternalRef

    ref = ExternalRef(system="crm", id="doc-in-a-disposal")
    [(first, _, _)] = await documents.store_many(ecm.uow, user_id="bridge", items=[_arrived(ecm, ref, b"KP 2022")],
                                                 retention=ecm.retention)
    now = datetime.now(timezone.utc)
    await _past_its_retention(ecm, first["id"], now)
    transfers: list[asyncio.Task] = []
    in_flight = ApprovalRepository.in_flight_for_document

    async def sent_meanwhile(self, document_id):
        transfers.append(asyncio.ensure_future(documents.store_many(  # its bytes written now
            ecm.uow, user_id="bridge", items=[_arrived(ecm, ref, b"KP 2022", long_ago=False)],
            retention=ecm.retention)))
        await asyncio.wait(transfers, timeout=1.0)
        return await in_flight(self, document_id)

    monkeypatch.setattr(ApprovalRepository, "in_flight_for_document", sent_meanwhile)
    done = await dispose(ecm, now, dry_run=False)
    [[(answered, version, created)]] = await asyncio.gather(*transfers)
    assert [(r["id"], r["disposed"], r["reason"]) for r in done] == [(first["id"], True, None)]
    async with ecm.uow() as uow:
        assert (await uow.documents.get(answered["id"]))["disposed_at"] is None
        assert await uow.external_refs.find("document", ref) == answered["id"] != first["id"]
    assert created and ecm.content_store.verified_path(version["sha256"]).read_bytes() == b"KP 2022"
