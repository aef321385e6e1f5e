import uuid
from datetime import datetime, timezone

from schemas import crm_commands, crm_events, ecm_commands, ecm_events
from schemas.common import ExternalRef
from schemas.envelope import new_envelope
from schemas.registry import encode, parse_message
from schemas.topics import CRM_COMMANDS, ECM_COMMANDS
from sync_bridge.translation import (
    StoredDocument,
    approval_requested_to_ecm,
    approval_status_to_crm,
    approval_withdrawn_to_ecm,
    command_id,
    counterparty_synced_to_crm,
)

SHA = "a" * 64


def requested(org_id="org-1", inn=None, deal_title="Supply", filename="c.pdf"):
    payload = crm_events.ApprovalRequestedV2(
        approval_request_id="req-1", requested_at=datetime.now(timezone.utc), requested_by="user-1",
        organization=crm_events.OrganizationSnapshotV2(
            id=org_id, name="Вектор", inn=inn, addresses=[crm_events.Address(city="Казань", street="Баумана")]),
        deal=crm_events.DealRef(id="deal-1", title=deal_title),
        document=crm_events.DocumentRef(id="doc-1", filename=filename, content_type="application/pdf",
                                        doc_type="contract", sha256=SHA, size=10),
    )
    envelope = new_envelope(type=crm_events.APPROVAL_REQUESTED, schema_version=2, source="crm", payload=payload,
                            correlation_id="corr-1")
    return envelope, payload


def test_approval_request_becomes_sync_then_start_keyed_by_organization():
    envelope, payload = requested(inn="7707083893")
    out = approval_requested_to_ecm(envelope, payload, StoredDocument("ecm-doc", "ecm-ver", SHA))
    assert [o.envelope.type for o in out] == [ecm_commands.SYNC_COUNTERPARTY, ecm_commands.START_APPROVAL]
    assert {o.topic for o in out} == {ECM_COMMANDS}
    assert {o.key for o in out} == {"org-1"}
    sync, start = (parse_message(encode(o.envelope)).payload for o in out)
    assert sync.external_ref == ExternalRef(system="crm", id="org-1") and sync.inn == "7707083893"
    assert sync.addresses[0].city == "Казань" and sync.addresses[0].kind == "legal"
    assert start.document_version_id == "ecm-ver" and start.sha256 == SHA
    assert start.external_ref.id == "req-1" and start.initiator_ref.id == "user-1"
    assert all(o.envelope.correlation_id == "corr-1" and o.envelope.causation_id == envelope.event_id for o in out)


def test_the_approvals_title_fits_the_ecm_keeping_the_file_name_whole():
    # A deal title (up to 500 characters in the CRM) and a file name (up to 255) each fit
    # the CRM; "<deal>: <file>" did not fit the ECM's 500, and on PostgreSQL the approval
    # never started (now the command itself would be invalid).
    filename = "Д" * 251 + ".pdf"
    envelope, payload = requested(deal_title="Поставка " * 55, filename=filename)
    _, start = approval_requested_to_ecm(envelope, payload, StoredDocument("ecm-doc", "ecm-ver", SHA))
    title = parse_message(encode(start.envelope)).payload.title
    assert len(title) == 500 and title.startswith("Поставка Поставка") and title.endswith("…: " + filename)
    envelope, payload = requested(deal_title="Supply", filename="c.pdf")
    _, start = approval_requested_to_ecm(envelope, payload, StoredDocument("ecm-doc", "ecm-ver", SHA))
    assert parse_message(encode(start.envelope)).payload.title == "Supply: c.pdf"  # short ones as they were


def test_a_sync_command_with_a_value_wider_than_the_registry_is_invalid_at_once():
    # Dead-lettered with its reason on arrival, instead of failing at the database on
    # every retry (PostgreSQL: "value too long for type character varying(2)").
    import json

    import pytest

    from schemas.registry import InvalidMessage

    envelope, payload = requested()
    sync, _ = approval_requested_to_ecm(envelope, payload, StoredDocument("ecm-doc", "ecm-ver", SHA))
    raw = json.loads(encode(sync.envelope))
    raw["payload"]["country"] = "Russia"
    with pytest.raises(InvalidMessage, match="country"):
        parse_message(json.dumps(raw).encode())


def test_command_ids_are_deterministic_so_replays_dedupe():
    envelope, payload = requested()
    stored = StoredDocument("d", "v", SHA)
    first = approval_requested_to_ecm(envelope, payload, stored)
    again = approval_requested_to_ecm(envelope, payload, stored)
    assert [o.envelope.event_id for o in first] == [o.envelope.event_id for o in again]
    assert first[0].envelope.event_id != first[1].envelope.event_id
    assert command_id(envelope.event_id, "x") != command_id(uuid.uuid4(), "x")


def _ecm_envelope(type_, payload):
    return new_envelope(type=type_, schema_version=1, source="ecm", payload=payload, correlation_id="c")


def test_approval_status_goes_to_crm_request_without_internal_comments():
    event = ecm_events.ApprovalStatusChangedV3(
        approval_id="a-1", external_refs=[ExternalRef(system="crm", id="req-1"), ExternalRef(system="erp", id="9")],
        counterparty_ref=ExternalRef(system="crm", id="org-1"), event="completed", status="rejected", stage=None,
        stage_no=None, revision=3, reason="wrong price", document_sha256=SHA,
    )
    out = approval_status_to_crm(_ecm_envelope(ecm_events.APPROVAL_STATUS_CHANGED, event), event)
    assert len(out) == 1 and out[0].topic == CRM_COMMANDS and out[0].key == "org-1"
    assert out[0].envelope.schema_version == 3
    cmd = parse_message(encode(out[0].envelope)).payload
    assert isinstance(cmd, crm_commands.UpdateApprovalStatusV3) and cmd.withdrawn_by is None
    assert (cmd.approval_request_id, cmd.status, cmd.revision, cmd.reason) == ("req-1", "rejected", 3, "wrong price")
    assert "comment" not in out[0].envelope.payload


def test_overdue_stage_summary_reaches_the_crm_with_due_date_and_delay_code_only():
    due = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)
    event = ecm_events.ApprovalStatusChangedV3(
        approval_id="a-1", external_refs=[ExternalRef(system="crm", id="req-1")], event="overdue",
        status="in_progress", stage="legal", stage_no=1, due_at=due, overdue=True, delay_reason_code="workload",
        revision=5, document_sha256=SHA)
    (out,) = approval_status_to_crm(_ecm_envelope(ecm_events.APPROVAL_STATUS_CHANGED, event), event)
    cmd = parse_message(encode(out.envelope)).payload
    assert (cmd.stage, cmd.due_at, cmd.overdue, cmd.delay_reason_code) == ("legal", due, True, "workload")


def test_a_withdrawal_goes_to_the_ecm_keyed_by_the_organization_and_comes_back_with_who_withdrew():
    at = datetime(2026, 12, 7, 19, 0, tzinfo=timezone.utc)
    event = crm_events.ApprovalWithdrawnV1(approval_request_id="req-1", organization_id="org-1", withdrawn_by="rep",
                                           withdrawn_at=at, reason="The client chose another supplier")
    envelope = new_envelope(type=crm_events.APPROVAL_WITHDRAWN, schema_version=1, source="crm", payload=event,
                            correlation_id="corr-1")
    (out,) = approval_withdrawn_to_ecm(envelope, event)
    assert (out.topic, out.key, out.envelope.type) == (ECM_COMMANDS, "org-1", ecm_commands.WITHDRAW_APPROVAL)
    assert out.envelope.event_id == command_id(envelope.event_id, "withdraw_approval")  # a replay dedupes
    cmd = parse_message(encode(out.envelope)).payload
    assert (cmd.external_ref.as_text(), cmd.withdrawn_by_ref.as_text(), cmd.withdrawn_at, cmd.reason) == (
        "crm:req-1", "crm:rep", at, "The client chose another supplier")

    closed = ecm_events.ApprovalStatusChangedV3(
        approval_id="a-1", external_refs=[ExternalRef(system="crm", id="req-1")], event="withdrawn",
        status="withdrawn", revision=4, reason="The client chose another supplier", document_sha256=SHA,
        withdrawn_by=ExternalRef(system="crm", id="rep"))
    (back,) = approval_status_to_crm(_ecm_envelope(ecm_events.APPROVAL_STATUS_CHANGED, closed), closed)
    update = parse_message(encode(back.envelope)).payload
    assert (update.status, update.withdrawn_by, update.stage) == ("withdrawn", "rep", None)


def test_counterparty_sync_result_reaches_crm_only_for_crm_records():
    linked = ecm_events.CounterpartySyncedV1(counterparty_id="cp", status="verified", outcome="linked",
                                             legal_name="ПАО Сбербанк", source_ref=ExternalRef(system="crm", id="o"))
    out = counterparty_synced_to_crm(_ecm_envelope(ecm_events.COUNTERPARTY_SYNCED, linked), linked)
    assert out[0].envelope.payload["link_status"] == "linked" and out[0].key == "o"
    foreign = linked.model_copy(update={"source_ref": ExternalRef(system="erp", id="o")})
    assert counterparty_synced_to_crm(_ecm_envelope(ecm_events.COUNTERPARTY_SYNCED, foreign), foreign) == []


def test_a_crm_merge_becomes_one_ecm_command_keyed_by_the_merged_organization():
    from sync_bridge.translation import organizations_merged_to_ecm

    event = crm_events.OrganizationsMergedV1(merged_id="loser", survivor_id="keeper", merged_by="u",
                                             merged_at=datetime(2026, 11, 22, tzinfo=timezone.utc))
    source = new_envelope(type=crm_events.ORGANIZATIONS_MERGED, schema_version=1, source="crm", payload=event,
                          correlation_id="c")
    (out,) = organizations_merged_to_ecm(source, event)
    command = parse_message(encode(out.envelope)).payload
    assert out.key == "loser" and out.envelope.type == ecm_commands.MERGE_EXTERNAL_REFS
    assert (command.merged_ref.as_text(), command.survivor_ref.as_text()) == ("crm:loser", "crm:keeper")
    assert organizations_merged_to_ecm(source, event)[0].envelope.event_id == out.envelope.event_id  # replay-safe
