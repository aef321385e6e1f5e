"""Document storage: immutable, content-addressed versions."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial

from ecm_service.domain.retention import (
    RENEWED_WHEN_ENDING_WITHIN,
    disposal_blocker,
    renewed,
    renewed_when_stored_again,
    retain_until,
    years_for,
)
from ecm_service.service_layer.approvals import reopen_for_new_version
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from infra.retrying import rerun_on_conflict
from schemas.common import ExternalRef

DOCUMENT = "document"


class NotFound(Exception):
    pass


class DocumentGone(Exception):
    pass


@rerun_on_conflict
async def store_version(
    uow: EcmUnitOfWork, *, user_id: str, doc_type: str, title: str, filename: str, content_type: str,
    sha256: str, size: int, external_ref: ExternalRef | None, retention: dict[str, int] | None = None,
    document_id: str | None = None,
) -> tuple[dict, dict, bool]:
    """Returns (document, version, created). Storing bytes under an external ref that the
    document already had returns that version: transfers may be retried or replayed. A new
    version of a document under approval re-opens its approvals (see approvals.reopen).
    Two at once for one document, or for one ref's first document, do not clash: the later
    one runs again on what the other committed (rerun_on_conflict). Under the ref of a
    document disposed of after its retention, the bytes make a new document (its first
    entry names the disposed one), so that nothing, an approval least of all, goes on with
    a document whose content is gone."""
    now = datetime.now(timezone.utc)
    by_ref, replaces, document = False, None, None
    async with uow:
        if document_id is not None:
            document = await live_document(uow, document_id)
        elif external_ref:
            document_id = await uow.external_refs.find(DOCUMENT, external_ref)
            if document_id is not None:
                document = await uow.documents.get(document_id, for_update=True)
                if document["disposed_at"]:
                    # Its earlier document was disposed of after its retention; the bytes
                    # that came again make a new document, and the ref moves to it.
                    await uow.external_refs.detach(DOCUMENT, external_ref)
                    replaces, document_id, document = document_id, None, None
            by_ref = document_id is not None
        renewed_now = document is not None and await _renew_when_ending(
            uow, document, years=years_for(retention, document["doc_type"]), now=now, actor=f"user:{user_id}")
        if document_id:
            versions = await uow.documents.versions(document_id)
            # Under an external ref, bytes the document already had are that version: a
            # transfer replayed after a newer version arrived stores nothing (and moves no
            # approval back to old bytes).
            same = [v for v in (versions if by_ref else versions[-1:]) if v["sha256"] == sha256]
            if same:
                if renewed_now:
                    await uow.commit()
                return await uow.documents.get(document_id), same[-1], False
            version_no = len(versions) + 1
        else:
            document_id, version_no = str(uuid.uuid4()), 1
            years = years_for(retention, doc_type)
            await uow.documents.add_document(id=document_id, doc_type=doc_type, title=title, owner_id=user_id,
                                             created_at=now,
                                             retain_until=retain_until(now, years) if years is not None else None)
            if external_ref:
                await uow.external_refs.attach(DOCUMENT, document_id, external_ref)
        version = dict(id=str(uuid.uuid4()), document_id=document_id, version_no=version_no, sha256=sha256,
                       size=size, content_type=content_type, filename=filename, created_by=user_id, created_at=now)
        await uow.documents.add_version(**version)
        stored = {"version_no": version_no, "sha256": sha256, "size": size, "content_type": content_type}
        if replaces:
            stored["replaces_disposed"] = replaces
        await uow.history.append(entity_type=DOCUMENT, entity_id=document_id, action="version_stored",
                                 actor=f"user:{user_id}", data=stored)
        if version_no > 1:
            await reopen_for_new_version(uow, document_id=document_id, version_id=version["id"], sha256=sha256,
                                         actor=f"user:{user_id}")
        await uow.commit()
        document = await uow.documents.get(document_id)
    return document, version, True


async def _renew_when_ending(uow: EcmUnitOfWork, document: dict, *, years: int | None, now: datetime,
                             actor: str) -> bool:
    """A live document stored again (under its lock) whose retention ends soon keeps it
    counted from now (domain.retention.renewed_when_stored_again), so that a disposal
    cannot take it from under the approval its transfer is for; that approval's start may
    still be on its way. Before, a transfer answered a document past its retention and a
    disposal running before the approval's start disposed of it: the approval went on with
    content that answers 410."""
    until = renewed_when_stored_again(document, years=years, now=now)
    if until is None:
        return False
    await _store_renewed(uow, document["id"], until, actor=actor, at=now, because="stored_again")
    return True


async def _store_renewed(uow: EcmUnitOfWork, document_id: str, until: datetime, *, actor: str, at: datetime,
                         because: str | None = None) -> None:
    """A document's renewed end of retention, and the history entry that says so."""
    await uow.documents.update_document(document_id, retain_until=until)
    await uow.history.append(entity_type=DOCUMENT, entity_id=document_id, action="retention_renewed", actor=actor,
                             data={"retain_until": until.isoformat(), **({"because": because} if because else {})},
                             at=at)


@dataclass(frozen=True)
class Arrived:
    """One file of a batch upload, its bytes already in the content store."""

    external_ref: ExternalRef
    doc_type: str
    title: str
    filename: str
    content_type: str
    sha256: str
    size: int


@rerun_on_conflict
async def store_many(new_uow: Callable[[], EcmUnitOfWork], *, user_id: str, items: list[Arrived],
                     retention: dict[str, int] | None = None) -> list[tuple[dict, dict, bool]]:
    """`store_version` for many files under external refs, in order, with the same answers
    (the same bytes under the same ref again: the existing version, created False). The
    common case - refs the ECM has not seen, or seen with these very bytes - is one
    transaction of a few statements for the whole batch; a new version of a known document
    (which re-opens its approvals), a ref whose document was disposed of or whose retention
    ends soon, and a ref repeated within the batch go through
    `store_version` one by one afterwards. Returns (document, version, created) per item;
    the document holds its id, doc type and title. Two batches carrying the same new ref
    at once (a transfer retried while the first attempt is still running, a rebalance
    between bridge workers) do not clash: the later runs again on what the other
    committed and answers its document (rerun_on_conflict; before, a 500)."""
    now = datetime.now(timezone.utc)
    results: list[tuple[dict, dict, bool] | None] = [None] * len(items)
    later: list[int] = []
    async with new_uow() as uow:
        known: dict[tuple[str, str], str] = {}
        for system in {item.external_ref.system for item in items}:
            ids = [item.external_ref.id for item in items if item.external_ref.system == system]
            found = await uow.external_refs.find_many(DOCUMENT, system, ids)
            known.update(((system, external_id), document_id) for external_id, (document_id, _) in found.items())
        latest = await uow.documents.latest_versions(sorted(set(known.values())))
        # Known documents disposed of, or whose retention ends soon, are looked at again
        # under their lock by `store_version` (a new document; a renewed retention).
        again = await uow.documents.to_look_at_again(
            sorted(set(known.values())), retention_ends_by=now + RENEWED_WHEN_ENDING_WITHIN) if known else set()
        documents, versions, refs, entries, seen = [], [], [], [], set()
        for i, item in enumerate(items):
            key = (item.external_ref.system, item.external_ref.id)
            document_id = known.get(key)
            if key in seen or (document_id is not None and (document_id in again or latest.get(
                    document_id, {}).get("sha256") != item.sha256)):
                later.append(i)
                continue
            seen.add(key)
            if document_id is not None:
                results[i] = ({"id": document_id, "doc_type": item.doc_type, "title": item.title},
                              latest[document_id], False)
                continue
            document_id = str(uuid.uuid4())
            years = years_for(retention, item.doc_type)
            document = dict(id=document_id, doc_type=item.doc_type, title=item.title, owner_id=user_id,
                            created_at=now, retain_until=retain_until(now, years) if years is not None else None)
            version = dict(id=str(uuid.uuid4()), document_id=document_id, version_no=1, sha256=item.sha256,
                           size=item.size, content_type=item.content_type, filename=item.filename,
                           created_by=user_id, created_at=now)
            documents.append(document)
            versions.append(version)
            refs.append((document_id, item.external_ref))
            entries.append(dict(entity_type=DOCUMENT, entity_id=document_id, action="version_stored",
                                actor=f"user:{user_id}", data={"version_no": 1, "sha256": item.sha256,
                                                               "size": item.size, "content_type": item.content_type}))
            results[i] = (document, version, True)
        if documents:
            await uow.documents.add_many(documents, versions)
            await uow.external_refs.attach_many(DOCUMENT, refs)
            await uow.history.append_many(entries, at=now)
            await uow.commit()
    for i in later:
        item = items[i]
        results[i] = await store_version(
            new_uow(), user_id=user_id, doc_type=item.doc_type, title=item.title, filename=item.filename,
            content_type=item.content_type, sha256=item.sha256, size=item.size, external_ref=item.external_ref,
            retention=retention)
    return results  # type: ignore[return-value]


async def live_document(uow: EcmUnitOfWork, document_id: str) -> dict:
    """The document, locked for this transaction (a disposal at the same moment waits, or
    is waited for and seen); NotFound, or DocumentGone once it is disposed of."""
    document = await uow.documents.get(document_id, for_update=True)
    if document is None:
        raise NotFound(f"document {document_id} not found")
    if document["disposed_at"]:
        raise DocumentGone(f"document {document_id} was disposed of")
    return document


async def set_legal_hold(uow: EcmUnitOfWork, *, document_id: str, hold: bool, user_id: str, reason: str) -> dict:
    async with uow:
        document = await live_document(uow, document_id)
        if document["legal_hold"] != hold:
            await uow.documents.update_document(document_id, legal_hold=hold,
                                                legal_hold_reason=reason if hold else None)
            await uow.history.append(entity_type=DOCUMENT, entity_id=document_id,
                                     action="legal_hold_set" if hold else "legal_hold_released",
                                     actor=f"user:{user_id}", reason=reason, data={})
        await uow.commit()
        return await uow.documents.get(document_id)


# Content written this recently is not deleted by a disposal: it may be the bytes of an
# upload whose transaction has not committed yet (the bytes go into the store first), which
# the disposal cannot see. `verify-content --remove-orphans` deletes it later if nothing
# came to need it.
RECENTLY_WRITTEN_SECONDS = 3600


def _written(path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _delete_unless_written_again(path, seen: os.stat_result | None, *, kept: list[str], sha256: str) -> None:
    """After the disposal's commit: the file it decided about, unless an upload of the same
    bytes has written it again since (every upload writes a new file; then it is named in
    `kept`)."""
    now = _written(path)
    if now is None:
        return
    if seen is not None and (now.st_ino, now.st_mtime_ns) == (seen.st_ino, seen.st_mtime_ns):
        path.unlink(missing_ok=True)
    else:
        kept.append(sha256)


async def dispose_expired(uow: EcmUnitOfWork, content_store, *, now: datetime, actor: str,
                          dry_run: bool, retention: dict[str, int]) -> list[dict]:
    """Disposes of every document whose retention has run out and that nothing keeps:
    its versions' bytes are deleted (unless another live document shares them) and the
    disposal is recorded; the card and its history stay. The documents are locked as they
    are read: a legal hold put at that moment either commits first and keeps its document,
    or waits and is refused on a disposed one (before, the disposal went on from what it
    had read and destroyed the held document); two disposals at once dispose of each
    document once. Bytes are deleted after the commit, never before it, and not when they
    were written within the last hour or again since the disposal looked at them: the
    same bytes uploaded for another document at that moment stay (before, a disposal
    could delete the bytes of a version committed just after it had looked).

    Retention runs from a document's last use (domain.retention.renewed): one whose
    latest version or latest approval came later than its creation is kept until its
    retention counted from then, and that date is stored on it (not in a dry run).
    Before, a document approved again years after its creation was disposed of as soon
    as its approval had ended."""
    results = []
    written_again: dict[str, list[str]] = {}  # document id -> bytes kept after the commit
    async with uow:
        for document in await uow.documents.retention_expired(now, for_update=not dry_run):
            versions = await uow.documents.versions(document["id"])
            until = renewed(document, years=years_for(retention, document["doc_type"]), last_used_at=[
                versions[-1]["created_at"] if versions else None,
                await uow.approvals.last_change_for_document(document["id"])])
            if until != document["retain_until"]:
                if not dry_run:
                    await _store_renewed(uow, document["id"], until, actor=actor, at=now)
                document = {**document, "retain_until": until}
            blocker = disposal_blocker(document, now=now,
                                       approvals_in_flight=await uow.approvals.in_flight_for_document(document["id"]))
            results.append({"id": document["id"], "eligible": blocker is None,
                            "disposed": blocker is None and not dry_run, "reason": blocker,
                            "retain_until": document["retain_until"]})
            if blocker or dry_run:
                continue
            await uow.documents.update_document(document["id"], disposed_at=now)
            deleted, kept = [], []
            for version in versions:
                if await uow.documents.content_used_elsewhere(version["sha256"], document["id"]):
                    continue
                path = content_store.path_for(version["sha256"])
                written = _written(path)
                if written is not None and written.st_mtime > time.time() - RECENTLY_WRITTEN_SECONDS:
                    kept.append(version["sha256"])  # an upload of the same bytes may be on its way
                    continue
                # Deleted once the disposal has committed: a transaction that fails leaves
                # its documents live, and so must it leave their bytes.
                uow.after_commit(partial(_delete_unless_written_again, path, written,
                                         kept=written_again.setdefault(document["id"], []), sha256=version["sha256"]))
                deleted.append(version["sha256"])
            await uow.history.append(entity_type=DOCUMENT, entity_id=document["id"], action="disposed", actor=actor,
                                     data={"versions": len(versions), "content_deleted": deleted,
                                           **({"content_kept_recently_written": kept} if kept else {})}, at=now)
        await uow.commit()
    await _record_written_again({d: shas for d, shas in written_again.items() if shas}, uow, results, actor=actor,
                                at=now)
    return results


async def _record_written_again(written_again: dict[str, list[str]], uow: EcmUnitOfWork, results: list[dict], *,
                                actor: str, at: datetime) -> None:
    """Bytes the disposal's entry names as deleted but found written again after its
    commit (an upload of the same file) stayed: a second entry says so, so that the
    history tells what happened to them (before, it said they were deleted)."""
    if not written_again:
        return
    async with uow.fork() as again:
        for document_id, shas in written_again.items():
            await again.history.append(entity_type=DOCUMENT, entity_id=document_id, action="content_kept",
                                       actor=actor, data={"content_kept": shas, "because": "written_again"}, at=at)
        await again.commit()
    for result in results:
        if result["id"] in written_again:
            result["content_kept"] = written_again[result["id"]]
