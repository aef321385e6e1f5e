"""`verify-content` on both services: the files the records need are there and hash to
their names; orphans (no record needs them) are listed and removed past a grace period;
a problem names the records it touches. On both backends, and from the command line."""

import io
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

from ecm_service.adapters.repositories import content_holders as ecm_holders
from ecm_service.service_layer import documents
from infra.content_check import check_content
from tests.integration.test_retention import _store

DAY = 24 * 3600


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_missing_corrupt_and_orphaned_files_are_found_and_old_orphans_removed(ecm):
    store = ecm.content_store
    gone, gone_sha = await _store(ecm, b"a contract whose file went missing", "contract")
    changed, changed_sha = await _store(ecm, b"a contract whose file changed on disk", "contract")
    await _store(ecm, b"a sound contract", "contract")
    _, disposed_sha = await _store(ecm, b"a proposal past its retention", "proposal")
    await documents.dispose_expired(ecm.uow(), store, now=datetime.now(timezone.utc) + timedelta(days=4 * 366),
                                    actor="test", dry_run=False, retention=ecm.retention)
    store.path_for(gone_sha).unlink()
    store.path_for(changed_sha).write_bytes(b"someone edited the stored file")
    old_orphan, _ = store.put(io.BytesIO(b"an upload whose transaction never came"), max_bytes=10**6)
    _age(store.path_for(old_orphan), 2 * DAY)
    young_orphan, _ = store.put(io.BytesIO(b"an upload in flight"), max_bytes=10**6)
    partial = store.root / ".upload-leftover"
    partial.write_bytes(b"half an upload")
    _age(partial, 2 * DAY)

    report = await check_content(ecm.session_factory, store, ecm_holders())
    assert report.files == 2 + 1  # the sound one, the changed one and the missing one
    assert report.missing == {gone_sha: [f"document {gone['id']} version 1"]}
    assert report.corrupt == {changed_sha: [f"document {changed['id']} version 1"]}
    assert sorted(report.orphans) == sorted([old_orphan, ".upload-leftover"]) and report.young_orphans == 1
    assert not report.intact and report.removed == []
    assert disposed_sha not in report.orphans  # its disposal deleted it

    unhashed = await check_content(ecm.session_factory, store, ecm_holders(), hashes=False)
    assert unhashed.corrupt == {} and set(unhashed.missing) == {gone_sha}

    cleaned = await check_content(ecm.session_factory, store, ecm_holders(), remove_orphans=True)
    assert sorted(cleaned.removed) == sorted(cleaned.orphans) == sorted([old_orphan, ".upload-leftover"])
    assert not store.path_for(old_orphan).exists() and not partial.exists()
    assert store.path_for(young_orphan).exists() and store.path_for(changed_sha).exists()


def test_verify_content_from_the_command_line_exits_1_on_a_missing_file(tmp_path):
    """Both services' command: a clean store exits 0, a missing file exits 1 and is named."""
    results = {}
    for service, dir_var in (("crm", "CRM_FILES_DIR"), ("ecm", "ECM_CONTENT_DIR")):
        env = {**os.environ, f"{service.upper()}_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / service}.db",
               dir_var: str(tmp_path / f"{service}-files"), "LOG_JSON": "true"}
        subprocess.run([sys.executable, "-m", f"{service}_service", "migrate"], env=env, check=True,
                       capture_output=True)
        results[service] = subprocess.run([sys.executable, "-m", f"{service}_service", "verify-content"], env=env,
                                          capture_output=True, text=True, timeout=120)
    for done in results.values():
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("content store: 0 files needed, 0 missing, 0 corrupt"), done.stdout

    import sqlite3

    sha = "ab" * 32
    with sqlite3.connect(tmp_path / "ecm.db") as db:
        db.execute("INSERT INTO documents (id, doc_type, title, owner_id, created_at, legal_hold) "
                   "VALUES ('d1', 'contract', 't', 'u', '2026-12-07 00:00:00', 0)")
        db.execute("INSERT INTO document_versions (id, document_id, version_no, sha256, size, content_type, "
                   "filename, created_by, created_at) VALUES ('v1', 'd1', 1, ?, 1, 'text/plain', 'f', 'u', "
                   "'2026-12-07 00:00:00')", (sha,))
    env = {**os.environ, "ECM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'ecm'}.db",
           "ECM_CONTENT_DIR": str(tmp_path / "ecm-files"), "LOG_JSON": "true"}
    done = subprocess.run([sys.executable, "-m", "ecm_service", "verify-content", "--skip-hashes"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and f"MISSING {sha}: document d1 version 1" in done.stdout, done.stdout
