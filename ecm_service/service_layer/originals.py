"""Paper originals of a document: the signed prints the office keeps.

Legal staff register each original when it comes back signed (of the version that was
signed: the approved one, by default the latest), say where it is filed, hand it out to a
colleague with a purpose and a date to bring it back, and take it back, perhaps to another
place. The table holds each original's present state; each step is also an entry in the
document's history chain, with who did it and when, so the chain tells where an original
has been. Users are named by id in the history (`user:<id>`): no personal data."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone

from ecm_service.service_layer.documents import DOCUMENT, NotFound, live_document
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from infra import business_day
from infra.users import User

IN_PLACE, HANDED_OUT = "in_place", "handed_out"


class OriginalConflict(Exception):
    """The original is not in the state the action needs (409)."""


class InvalidOriginal(ValueError):
    """The request itself cannot be carried out: an unknown version or holder, a date in
    the past (422)."""


async def _original(uow: EcmUnitOfWork, document_id: str, number: int) -> dict:
    original = await uow.originals.get(document_id, number, for_update=True)
    if original is None:
        raise NotFound(f"document {document_id} has no original no. {number}")
    return original


async def register(uow: EcmUnitOfWork, *, document_id: str, location: str, user: User,
                   version_id: str | None = None) -> int:
    """A signed original of the document, filed at `location`: of `version_id`, or else of
    the latest version; its number. Numbered within its document (1, 2, ...): the document
    row is locked, so two registrations at once take two numbers."""
    async with uow:
        await live_document(uow, document_id)
        versions = await uow.documents.versions(document_id)
        version = next((v for v in versions if v["id"] == version_id), None) if version_id else versions[-1]
        if version is None:
            raise InvalidOriginal(f"document {document_id} has no version {version_id}")
        now = datetime.now(timezone.utc)
        number = await uow.originals.next_number(document_id)
        await uow.originals.add(id=str(uuid.uuid4()), document_id=document_id, version_id=version["id"], number=number,
                                state=IN_PLACE, location=location, registered_by=user.id, registered_at=now,
                                updated_at=now)
        await uow.history.append(entity_type=DOCUMENT, entity_id=document_id, action="original_registered",
                                 actor=f"user:{user.id}", data={"number": number, "version_no": version["version_no"],
                                                                "sha256": version["sha256"], "location": location})
        await uow.commit()
    return number


async def hand_out(uow: EcmUnitOfWork, *, document_id: str, number: int, to_user_id: str, due_back: date,
                   purpose: str, user: User) -> None:
    """The original leaves its place with a colleague (an ECM user), for `purpose`, to
    come back by `due_back` (a day of the company's calendar, today or later)."""
    if due_back < business_day.today():
        raise InvalidOriginal(f"due back {due_back.isoformat()} is in the past")
    async with uow:
        await live_document(uow, document_id)
        original = await _original(uow, document_id, number)
        if original["state"] != IN_PLACE:
            raise OriginalConflict(f"original no. {number} is handed out already (due back "
                                   f"{original['due_back'].isoformat()})")
        if not await uow.originals.user_exists(to_user_id):
            raise InvalidOriginal(f"no ECM user {to_user_id}")
        now = datetime.now(timezone.utc)
        await uow.originals.update(original["id"], state=HANDED_OUT, holder_id=to_user_id, due_back=due_back,
                                   purpose=purpose, handed_out_at=now, updated_at=now)
        await uow.history.append(entity_type=DOCUMENT, entity_id=document_id, action="original_handed_out",
                                 actor=f"user:{user.id}", reason=purpose,
                                 data={"number": number, "to": f"user:{to_user_id}", "due_back": due_back.isoformat(),
                                       "from_location": original["location"]})
        await uow.commit()


async def take_back(uow: EcmUnitOfWork, *, document_id: str, number: int, location: str | None,
                    user: User) -> None:
    """The original is back, filed at `location` (or where it was kept before)."""
    async with uow:
        await live_document(uow, document_id)
        original = await _original(uow, document_id, number)
        if original["state"] != HANDED_OUT:
            raise OriginalConflict(f"original no. {number} is in its place ({original['location']})")
        now = datetime.now(timezone.utc)
        place = location or original["location"]
        overdue_days = max(0, (business_day.today() - original["due_back"]).days)
        await uow.originals.update(original["id"], state=IN_PLACE, location=place, holder_id=None, due_back=None,
                                   purpose=None, handed_out_at=None, updated_at=now)
        await uow.history.append(entity_type=DOCUMENT, entity_id=document_id, action="original_returned",
                                 actor=f"user:{user.id}",
                                 data={"number": number, "from": f"user:{original['holder_id']}", "location": place,
                                       "days_overdue": overdue_days})
        await uow.commit()


def with_overdue(originals: list[dict], today: date | None = None) -> list[dict]:
    """Each original with `overdue_days`: how many of the company's days it is late
    (0 when in place or not due yet)."""
    today = today or business_day.today()
    return [{**o, "overdue_days": max(0, (today - o["due_back"]).days) if o.get("due_back") else 0}
            for o in originals]
