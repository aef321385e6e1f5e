"""The CRM applies a consumed batch of commands with its rows locked and read once for
all, and the status history written together at commit: fewer statements per command,
the same effects as one by one (a later command of the batch sees what an earlier one
changed, a resent one changes nothing)."""

from sqlalchemy import event, func, select

from crm_service.adapters import tables
from crm_service.service_layer import handlers
from schemas import crm_commands
from schemas.envelope import new_envelope
from schemas.registry import encode, parse_message


def _message(type_, payload):
    return parse_message(encode(new_envelope(type=type_, schema_version=2, source="it", correlation_id="c",
                                             payload=payload)))


async def _requests(crm, n):
    made = []
    for i in range(n):
        org = await handlers.create_organization(crm.uow(), user_id="u", name=f"Вектор {i}")
        deal = await handlers.create_deal(crm.uow(), user_id="u", organization_id=org.id,
                                          title="Deal", funnel=crm.funnel)
        doc = await handlers.attach_document(crm.uow(), user_id="u", deal_id=deal.id, filename="c",
                                             doc_type="contract", content_type="text/plain", sha256="c" * 64, size=1)
        request = await handlers.request_approval(crm.uow(), user_id="u", deal_id=deal.id, document_id=doc.id,
                                                  correlation_id="c")
        made.append((org.id, request.id))
    return made


def _commands(made):
    messages = []
    for i, (org_id, request_id) in enumerate(made):
        messages.append(_message(crm_commands.UPDATE_ORGANIZATION_LINK, crm_commands.UpdateOrganizationLinkV2(
            organization_id=org_id, registry_id=f"cp-{i}", link_status="pending", registry_name=f"ООО Вектор {i}",
            registry_seq=10 + i)))
        messages.append(_message(crm_commands.UPDATE_APPROVAL_STATUS, crm_commands.UpdateApprovalStatusV2(
            approval_request_id=request_id, status="in_progress", stage="legal", revision=1,
            registry_approval_id=f"a-{i}")))
    return messages


async def _applied_with_statements(crm, messages) -> int:
    statements = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(crm.engine.sync_engine, "before_cursor_execute", listener)
    try:
        await handlers.apply_commands(crm.uow(), messages, "it")
    finally:
        event.remove(crm.engine.sync_engine, "before_cursor_execute", listener)
    return len(statements)


async def test_a_batch_of_commands_locks_and_reads_once_and_keeps_each_commands_effect(crm):
    small, large = await _requests(crm, 2), await _requests(crm, 8)
    few = await _applied_with_statements(crm, _commands(small))
    batch = _commands(large)
    later = _message(crm_commands.UPDATE_APPROVAL_STATUS, crm_commands.UpdateApprovalStatusV2(
        approval_request_id=large[0][1], status="approved", revision=2, registry_approval_id="a-0"))
    many = await _applied_with_statements(crm, batch + [batch[1], later])  # batch[1] resent
    # Per further request (a link and a status command): the two saves; before, also a
    # read of each row and a status-history insert each (5 statements).
    assert (many - few) / (len(large) - len(small)) <= 2.5, (few, many)

    async with crm.uow() as uow:
        for i, (org_id, request_id) in enumerate(small + large):
            org = await uow.organizations.get(org_id)
            request = await uow.approval_requests.get(request_id)
            assert org.registry_id == f"cp-{i if i < 2 else i - 2}"
            expected = "approved" if request_id == large[0][1] else "in_progress"
            assert (request.status, request.registry_approval_id is not None) == (expected, True)
    h = tables.approval_status_history
    async with crm.session_factory() as session:
        rows = (await session.execute(select(h.c.approval_request_id, h.c.status, h.c.revision)
                                      .order_by(h.c.id))).all()
        marks = await session.scalar(select(func.count()).select_from(tables.inbox))
    # One history row per change: the resent command changed nothing, the later one
    # built on the first (revision 2 over 1) within the same transaction.
    assert len(rows) == 10 + 1
    assert [(r.status, r.revision) for r in rows if r.approval_request_id == large[0][1]] == [
        ("in_progress", 1), ("approved", 2)]
    assert marks == 4 + 16 + 1  # the resent command is recognised by its id and not marked twice
