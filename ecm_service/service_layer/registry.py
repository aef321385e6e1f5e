"""Soft sync into the counterparty registry: always accepted, linked only when
identifiers agree with a verified record, otherwise kept pending for the steward."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from ecm_service.domain.counterparty import PENDING, Counterparty, pick_verified_match, quality_flags
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from schemas import ecm_commands, ecm_events
from schemas.envelope import Envelope, new_envelope
from schemas.topics import ECM_EVENTS

COUNTERPARTY = "counterparty"
SOURCE = "ecm"


async def sync_counterparty(uow: EcmUnitOfWork, cmd: ecm_commands.SyncCounterpartyV1, envelope: Envelope) -> dict:
    now = datetime.now(timezone.utc)
    ids = dict(inn=_clean(cmd.inn), kpp=_clean(cmd.kpp), ogrn=_clean(cmd.ogrn))
    country = (cmd.country or "RU").upper()
    existing_id = await uow.external_refs.find(COUNTERPARTY, cmd.external_ref)
    if existing_id:
        record = await uow.counterparties.get(existing_id, for_update=True)
        outcome = "updated"
        if record.status == PENDING:  # a verified record is master data: sync never overwrites it
            record.name, record.legal_form, record.country = cmd.name, cmd.legal_form, country
            record.inn, record.kpp, record.ogrn = ids["inn"], ids["kpp"], ids["ogrn"]
            record.quality_flags = quality_flags(country=country, **ids)
            record.addresses = [a.model_dump() for a in cmd.addresses]
            record.updated_at = now
            await uow.counterparties.save(record)
    else:
        candidates = await uow.counterparties.verified_with_inn(ids["inn"]) if ids["inn"] else []
        record = pick_verified_match(candidates, inn=ids["inn"], kpp=ids["kpp"])
        outcome = "linked"
        if record is None:
            outcome = "created"
            record = Counterparty(
                id=str(uuid.uuid4()), name=cmd.name, status=PENDING, created_at=now, updated_at=now,
                legal_form=cmd.legal_form, country=country, quality_flags=quality_flags(country=country, **ids),
                addresses=[a.model_dump() for a in cmd.addresses], **ids,
            )
            await uow.counterparties.add(record)
        await uow.external_refs.attach(COUNTERPARTY, record.id, cmd.external_ref)
    event = ecm_events.CounterpartySyncedV1(
        counterparty_id=record.id, status=record.status, outcome=outcome, legal_name=record.name,
        inn=record.inn, kpp=record.kpp, ogrn=record.ogrn, source_ref=cmd.external_ref,
    )
    await uow.publish(
        ECM_EVENTS, record.id,
        new_envelope(type=ecm_events.COUNTERPARTY_SYNCED, schema_version=1, source=SOURCE, payload=event,
                     correlation_id=envelope.correlation_id, causation_id=envelope.event_id),
    )
    return {"counterparty_id": record.id, "outcome": outcome}


def _clean(value: str | None) -> str | None:
    value = (value or "").strip().replace(" ", "")
    return value or None
