"""Soft sync into the counterparty registry: always accepted, linked only when
identifiers agree with a verified record, otherwise kept pending for the steward."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from ecm_service.domain.counterparty import PENDING, Counterparty, pick_verified_match
from ecm_service.domain.identifiers import compact
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from schemas import ecm_commands, ecm_events
from schemas.envelope import Envelope, new_envelope
from schemas.topics import ECM_EVENTS

COUNTERPARTY = "counterparty"
SOURCE = "ecm"


async def sync_counterparty(uow: EcmUnitOfWork, cmd: ecm_commands.SyncCounterpartyV1, envelope: Envelope) -> dict:
    now = datetime.now(timezone.utc)
    ids = dict(inn=compact(cmd.inn), kpp=compact(cmd.kpp), ogrn=compact(cmd.ogrn))
    country = (cmd.country or "RU").upper()
    existing_id = await uow.external_refs.find(COUNTERPARTY, cmd.external_ref)
    if existing_id:
        record = await uow.counterparties.get(existing_id, for_update=True)
        outcome = "updated"
        if record.status == PENDING:  # a verified record is master data: sync never overwrites it
            record.name, record.legal_form, record.country = cmd.name, cmd.legal_form, country
            record.inn, record.kpp, record.ogrn = ids["inn"], ids["kpp"], ids["ogrn"]
            record.addresses = [a.model_dump() for a in cmd.addresses]
            record.refresh_derived()
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
                legal_form=cmd.legal_form, country=country, addresses=[a.model_dump() for a in cmd.addresses], **ids,
            )
            record.refresh_derived()
            await uow.counterparties.add(record)
        await uow.external_refs.attach(COUNTERPARTY, record.id, cmd.external_ref)
    seq = await uow.history.append(
        entity_type=COUNTERPARTY, entity_id=record.id, action=f"sync_{outcome}",
        actor=f"{cmd.external_ref.system}:sync",
        data={"source_ref": cmd.external_ref.as_text(), "quality_flags": record.quality_flags})
    event = ecm_events.CounterpartySyncedV1(
        counterparty_id=record.id, status=record.status, outcome=outcome, legal_name=record.name,
        inn=record.inn, kpp=record.kpp, ogrn=record.ogrn, source_ref=cmd.external_ref,
        registry_seq=seq,
    )
    await uow.publish(
        ECM_EVENTS, record.id,
        new_envelope(type=ecm_events.COUNTERPARTY_SYNCED, schema_version=1, source=SOURCE, payload=event,
                     correlation_id=envelope.correlation_id, causation_id=envelope.event_id),
    )
    return {"counterparty_id": record.id, "outcome": outcome}
