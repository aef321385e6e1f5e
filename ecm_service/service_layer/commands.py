"""Applies commands from `ecm.commands` exactly once per command id."""

from __future__ import annotations

from ecm_service.domain.approval import Route
from ecm_service.service_layer import approvals, registry
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from schemas import ecm_commands
from schemas.registry import Message

ACCEPTED_COMMANDS = frozenset({
    ecm_commands.SYNC_COUNTERPARTY, ecm_commands.START_APPROVAL, ecm_commands.REASSIGN_INITIATOR,
    ecm_commands.MERGE_EXTERNAL_REFS,
})


async def apply_command(uow: EcmUnitOfWork, message: Message, topic: str, routes: dict[str, Route],
                        doc_types: dict | None = None) -> None:
    envelope = message.envelope
    async with uow:
        if await uow.already_applied(envelope.event_id):
            return
        if envelope.type == ecm_commands.SYNC_COUNTERPARTY:
            detail = await registry.sync_counterparty(uow, message.payload, envelope)
        elif envelope.type == ecm_commands.MERGE_EXTERNAL_REFS:
            detail = await registry.merge_external_refs(uow, message.payload, envelope)
        elif envelope.type == ecm_commands.START_APPROVAL:
            detail = await approvals.start_approval(uow, message.payload, envelope, routes, doc_types or {})
        else:
            detail = await approvals.reassign_initiator(uow, message.payload, envelope)
        await uow.mark_applied(envelope.event_id, envelope.type, topic, detail)
        await uow.commit()
