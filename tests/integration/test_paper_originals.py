"""Paper originals of a document, through the ECM's real app on both backends: registered
of the signed version and numbered, handed out to a colleague with a purpose and a date,
refused what their state does not allow, taken back; each step in the document's history
chain; the list of those out of their place, the longest overdue first."""

import csv
import io
from datetime import date, timedelta

from sqlalchemy import select

from ecm_service.adapters import tables
from ecm_service.adapters.history import verify_chain
from ecm_service.service_layer import originals
from ecm_service.service_layer.documents import store_version
from infra import business_day


async def _document(container, *contents: bytes) -> tuple[str, list[dict]]:
    document_id, versions = None, []
    for content in contents:
        sha, size = container.content_store.put(io.BytesIO(content), max_bytes=10**6)
        doc, version, _ = await store_version(
            container.uow(), user_id="legal-owner", doc_type="contract", title="Договор поставки", filename="c.txt",
            content_type="text/plain", sha256=sha, size=size, external_ref=None, retention=container.retention,
            document_id=document_id)
        document_id = doc["id"]
        versions.append(version)
    return document_id, versions


async def _user_id(container, role: str) -> str:
    async with container.session_factory() as session:
        return await session.scalar(select(tables.users.c.id).where(tables.users.c.name == f"{role}-user"))


async def test_an_original_is_registered_handed_out_and_taken_back_and_the_history_tells_its_way(ecm_app):
    client, tokens, container = ecm_app
    as_ = {role: {"Authorization": f"Bearer {token}"} for role, token in tokens.items()}
    document_id, (first, second) = await _document(container, b"contract v1", b"contract v2, signed")
    base = f"/api/documents/{document_id}/originals"

    one = await client.post(base, json={"location": "archive, shelf 4"}, headers=as_["legal"])
    assert one.status_code == 201, one.text
    assert {k: one.json()[k] for k in ("number", "state", "location", "version_no", "sha256", "overdue_days")} == {
        "number": 1, "state": "in_place", "location": "archive, shelf 4", "version_no": 2,
        "sha256": second["sha256"], "overdue_days": 0}
    two = await client.post(base, json={"location": "safe", "version_id": first["id"]}, headers=as_["admin"])
    assert (two.json()["number"], two.json()["version_no"]) == (2, 1)
    unknown = await client.post(base, json={"location": "safe", "version_id": "nope"}, headers=as_["legal"])
    assert unknown.status_code == 422 and "no version nope" in unknown.json()["detail"]
    assert (await client.post("/api/documents/missing/originals", json={"location": "x"},
                              headers=as_["legal"])).status_code == 404
    assert (await client.post(base, json={"location": ""}, headers=as_["legal"])).status_code == 422

    director = await _user_id(container, "director")
    due = business_day.today() + timedelta(days=3)
    out = await client.post(f"{base}/1/hand-out", json={"to_user_id": director, "due_back": due.isoformat(),
                                                        "purpose": "signing the annex"}, headers=as_["legal"])
    assert out.status_code == 200, out.text
    assert {k: out.json()[k] for k in ("state", "holder_id", "holder_name", "due_back", "purpose")} == {
        "state": "handed_out", "holder_id": director, "holder_name": "director-user", "due_back": due.isoformat(),
        "purpose": "signing the annex"}
    again = await client.post(f"{base}/1/hand-out", json={"to_user_id": director, "due_back": due.isoformat(),
                                                          "purpose": "again"}, headers=as_["legal"])
    assert again.status_code == 409 and "handed out already" in again.json()["detail"]
    refused = {
        "past": {"to_user_id": director, "due_back": (business_day.today() - timedelta(days=1)).isoformat(),
                 "purpose": "late"},
        "nobody": {"to_user_id": "no-such-user", "due_back": due.isoformat(), "purpose": "who?"},
        "integration": {"to_user_id": await _user_id(container, "integration"), "due_back": due.isoformat(),
                        "purpose": "a service"},
        "no date": {"to_user_id": director, "due_back": "soon", "purpose": "when?"},
    }
    for case, body in refused.items():
        answer = await client.post(f"{base}/2/hand-out", json=body, headers=as_["legal"])
        assert answer.status_code == 422, (case, answer.text)
    assert (await client.post(f"{base}/2/return", json={}, headers=as_["legal"])).status_code == 409
    assert (await client.post(f"{base}/9/return", json={}, headers=as_["legal"])).status_code == 404

    # Read by whoever may read the document; the list of those out for legal staff,
    # admins and auditors.
    listed = (await client.get(base, headers=as_["auditor"])).json()
    assert [(o["number"], o["state"]) for o in listed] == [(1, "handed_out"), (2, "in_place")]
    assert [o["number"] for o in (await client.get("/api/originals/handed-out", headers=as_["auditor"])).json()] == [1]
    mine = (await client.get(f"/api/originals/handed-out?holder_id={director}", headers=as_["legal"])).json()
    assert [(o["title"], o["holder_name"]) for o in mine] == [("Договор поставки", "director-user")]

    back = await client.post(f"{base}/1/return", json={"location": "archive, shelf 5"}, headers=as_["legal"])
    assert back.status_code == 200
    assert {k: back.json()[k] for k in ("state", "location", "holder_id", "due_back")} == {
        "state": "in_place", "location": "archive, shelf 5", "holder_id": None, "due_back": None}
    assert (await client.get("/api/originals/handed-out", headers=as_["legal"])).json() == []

    async with container.uow() as uow:
        entries = await uow.history.of("document", document_id)
        report = await verify_chain(uow.session)
    steps = [(e["action"], e["data"].get("number")) for e in entries if e["action"].startswith("original_")]
    assert steps == [("original_registered", 1), ("original_registered", 2), ("original_handed_out", 1),
                     ("original_returned", 1)]
    handed = next(e for e in entries if e["action"] == "original_handed_out")
    assert (handed["data"]["to"], handed["data"]["due_back"], handed["reason"]) == (
        f"user:{director}", due.isoformat(), "signing the annex")
    assert report.intact


async def test_originals_out_are_listed_the_longest_overdue_first(ecm_app):
    client, tokens, container = ecm_app
    legal = {"Authorization": f"Bearer {tokens['legal']}"}
    finance = await _user_id(container, "finance")
    today = business_day.today()
    for days in (5, 1, 3):
        document_id, _ = await _document(container, f"contract due in {days}".encode())
        await client.post(f"/api/documents/{document_id}/originals", json={"location": "archive"}, headers=legal)
        answer = await client.post(f"/api/documents/{document_id}/originals/1/hand-out", headers=legal, json={
            "to_user_id": finance, "due_back": (today + timedelta(days=days)).isoformat(), "purpose": "audit"})
        assert answer.status_code == 200, answer.text
    out = (await client.get("/api/originals/handed-out", headers=legal)).json()
    assert [date.fromisoformat(o["due_back"]) - today for o in out] == [timedelta(days=d) for d in (1, 3, 5)]
    # A week on, each is late by the days since its date.
    async with container.uow() as uow:
        later = originals.with_overdue(await uow.originals.handed_out(), today=today + timedelta(days=7))
    assert [o["overdue_days"] for o in later] == [6, 4, 2]


async def test_an_original_number_out_of_range_is_a_422_not_a_database_error(ecm_app):
    client, tokens, container = ecm_app
    legal = {"Authorization": f"Bearer {tokens['legal']}"}
    document_id, _ = await _document(container, b"contract")
    for number in (0, 2**63):
        answer = await client.post(f"/api/documents/{document_id}/originals/{number}/return", json={}, headers=legal)
        assert answer.status_code == 422, (number, answer.text)


async def test_the_register_of_originals_out_exports_as_csv_with_inert_text(ecm_app):
    client, tokens, container = ecm_app
    legal = {"Authorization": f"Bearer {tokens['legal']}"}
    director = await _user_id(container, "director")
    document_id, _ = await _document(container, b"contract for the csv")
    base = f"/api/documents/{document_id}/originals"
    await client.post(base, json={"location": "archive"}, headers=legal)
    due = business_day.today() + timedelta(days=2)
    await client.post(f"{base}/1/hand-out", headers=legal,
                      json={"to_user_id": director, "due_back": due.isoformat(), "purpose": "=HYPERLINK(\"x\")"})
    answer = await client.get("/api/originals/handed-out", params={"format": "csv"}, headers=legal)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert answer.content.startswith(b"\xef\xbb\xbf")  # a BOM, for Excel
    rows = list(csv.DictReader(io.StringIO(answer.content.decode("utf-8-sig"))))
    assert [(r["title"], r["number"], r["version_no"], r["holder_name"], r["due_back"], r["purpose"], r["location"])
            for r in rows] == [("Договор поставки", "1", "1", "director-user", due.isoformat(), "'=HYPERLINK(\"x\")",
                                "archive")]
    assert (await client.get("/api/originals/handed-out", params={"format": "xml"}, headers=legal)).status_code == 422
