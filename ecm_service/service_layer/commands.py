"""Applies commands from `ecm.commands` exactly once per command id."""

from __future__ import annotations

from ecm_service.domain.approval import Route
from ecm_service.service_layer import approvals, registry
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork
from schemas import ecm_commands
from schemas.registry import Message

ACCEPTED_COMMANDS = frozenset({
    ecm_commands.SYNC_COUNTERPARTY, ecm_commands.START_APPROVAL, ecm_commands.REASSIGN_INITIATOR,
    ecm_commands.MERGE_EXTERNAL_REFS, ecm_commands.WITHDRAW_APPROVAL,
})


async def apply_command(uow: EcmUnitOfWork, message: Message, topic: str, routes: dict[str, Route],
                        doc_types: dict | None = None) -> None:
    await apply_commands(uow, [message], topic, routes, doc_types)


async def apply_commands(uow: EcmUnitOfWork, messages: list[Message], topic: str, routes: dict[str, Route],
                         doc_types: dict | None = None) -> None:
    """Commands of one consumed batch, in order, in one transaction: the inbox is read
    once and the history chain locked once. If one fails, none is applied (the consumer
    then applies them one by one)."""
    async def handle(message: Message) -> dict:
        envelope = message.envelope
        if envelope.type == ecm_commands.SYNC_COUNTERPARTY:
            return await registry.sync_counterparty(uow, message.payload, envelope)
        if envelope.type == ecm_commands.MERGE_EXTERNAL_REFS:
            return await registry.merge_external_refs(uow, message.payload, envelope)
        if envelope.type == ecm_commands.START_APPROVAL:
            return await approvals.start_approval(uow, message.payload, envelope, routes, doc_types or {})
        if envelope.type == ecm_commands.WITHDRAW_APPROVAL:
            return await approvals.withdraw_approval(uow, message.payload, envelope)
        return await approvals.reassign_initiator(uow, message.payload, envelope)

    async with uow:
        # What the commands read, asked once for the batch (a command that is a
        # duplicate or already applied only costs its share of these statements).
        await approvals.prefetch_for_starts(
            uow, [m.payload for m in messages if m.envelope.type == ecm_commands.START_APPROVAL])
        syncs = [m.payload for m in messages if m.envelope.type == ecm_commands.SYNC_COUNTERPARTY]
        await uow.external_refs.prefetch(registry.COUNTERPARTY, [c.external_ref for c in syncs])
        # Of the organizations the registry has no reference for, those the CRM merged away.
        await uow.external_refs.prefetch_merges(registry.COUNTERPARTY, [c.external_ref for c in syncs] + [
            m.payload.counterparty_ref for m in messages if m.envelope.type == ecm_commands.START_APPROVAL])
        await registry.prefetch_matches(uow, syncs)
        await uow.apply_once(messages, topic, handle)
        await uow.commit()
