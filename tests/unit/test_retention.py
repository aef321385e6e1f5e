from datetime import datetime, timedelta, timezone

from ecm_service.domain.retention import (
    RENEWED_WHEN_ENDING_WITHIN,
    disposal_blocker,
    renewed_when_stored_again,
    retain_until,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def test_retention_counts_whole_years_and_survives_leap_days():
    assert retain_until(datetime(2024, 2, 29, tzinfo=timezone.utc), 5) == datetime(2029, 2, 28, tzinfo=timezone.utc)
    assert retain_until(NOW, 3) == datetime(2029, 11, 22, 12, 0, tzinfo=timezone.utc)


def test_what_keeps_a_document():
    past = NOW - timedelta(days=1)
    doc = {"retain_until": past, "legal_hold": False, "disposed_at": None}
    assert disposal_blocker(doc, now=NOW, approvals_in_flight=0) is None
    assert disposal_blocker({**doc, "legal_hold": True}, now=NOW, approvals_in_flight=0) == "under legal hold"
    assert disposal_blocker(doc, now=NOW, approvals_in_flight=1) == "an approval is in progress"
    assert disposal_blocker({**doc, "retain_until": NOW + timedelta(days=1)}, now=NOW,
                            approvals_in_flight=0) == "retention has not run out"
    assert disposal_blocker({**doc, "retain_until": None}, now=NOW, approvals_in_flight=0) == \
        "retention has not run out"
    assert disposal_blocker({**doc, "disposed_at": past}, now=NOW, approvals_in_flight=0) == "already disposed"


def test_a_document_stored_again_renews_its_retention_only_when_it_ends_soon():
    soon = {"retain_until": NOW + RENEWED_WHEN_ENDING_WITHIN}
    assert renewed_when_stored_again(soon, years=3, now=NOW) == retain_until(NOW, 3)
    assert renewed_when_stored_again({"retain_until": NOW - timedelta(days=400)}, years=3, now=NOW) == \
        retain_until(NOW, 3)
    far = {"retain_until": NOW + RENEWED_WHEN_ENDING_WITHIN + timedelta(seconds=1)}
    assert renewed_when_stored_again(far, years=3, now=NOW) is None
    assert renewed_when_stored_again({"retain_until": None}, years=3, now=NOW) is None  # kept for good
    assert renewed_when_stored_again(soon, years=None, now=NOW) is None
    assert renewed_when_stored_again(soon, years=0, now=NOW) is None  # nothing later to give


def test_bytes_a_disposal_meant_to_delete_stay_when_written_again_or_first_written_after_it_looked(tmp_path):
    import os

    from ecm_service.service_layer.documents import _delete_unless_written_again

    kept: list[str] = []
    same, again, new = tmp_path / "same", tmp_path / "again", tmp_path / "new"
    for path in (same, again):
        path.write_bytes(b"x")
    looked = {path: path.stat() for path in (same, again)}
    (tmp_path / "again.tmp").write_bytes(b"x")
    os.replace(tmp_path / "again.tmp", again)  # an upload writes a new file and renames it in place
    new.write_bytes(b"x")  # not there when the disposal looked
    _delete_unless_written_again(same, looked[same], kept=kept, sha256="same")
    _delete_unless_written_again(again, looked[again], kept=kept, sha256="again")
    _delete_unless_written_again(new, None, kept=kept, sha256="new")
    _delete_unless_written_again(tmp_path / "gone", None, kept=kept, sha256="gone")
    assert not same.exists() and again.exists() and new.exists() and kept == ["again", "new"]
