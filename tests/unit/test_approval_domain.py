from datetime import datetime, timedelta, timezone

import pytest

from ecm_service.domain.approval import (
    Actor,
    Approval,
    ApprovalClosed,
    DecisionNotAllowed,
    InvalidDecision,
)
from ecm_service.domain.routes import InvalidRoute, load_routes, parse_route

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=timezone.utc)
LENA, FEDOR, DINA = Actor("u1", "legal-lena", "legal"), Actor("u2", "finance-fedor", "finance"), \
    Actor("u3", "director-dina", "director")
LEGAL2, LEGAL3 = Actor("u4", "legal-lev", "legal"), Actor("u5", "legal-lida", "legal")
SEQUENTIAL = parse_route("contract", {"stages": [
    {"name": "legal", "role": "legal", "deadline_hours": 24, "remind_before_hours": 4, "escalation_role": "director"},
    {"name": "finance", "role": "finance"},
    {"name": "director", "role": "director"}]}, version=1)


def start(route=SEQUENTIAL, *, needs_verified=False, verified=False, sha="0" * 64) -> Approval:
    return Approval.start(
        route=route, at=NOW, counterparty_verified=verified, needs_verified_counterparty=needs_verified,
        id="a", document_id="d", document_version_id="v1", document_sha256=sha, doc_type="contract", title="t",
        initiator_ref="crm:u", correlation_id="c")


def approve(approval, actor, **kw):
    return approval.decide(actor=actor, decision="approve", comment=None, reason=None, at=NOW, **kw)


def test_stages_run_in_order_and_the_last_approval_closes_it():
    approval = start()
    assert approval.current_step.name == "legal" and approval.revision == 1
    assert approval.current_step.due_at == NOW + timedelta(hours=24)
    approve(approval, LENA)
    approve(approval, FEDOR)
    assert approval.status == "in_progress" and approval.current_step.name == "director"
    place = approve(approval, DINA)
    assert approval.status == "approved" and approval.current_step is None and approval.revision == 4
    assert [s.status for s in approval.steps] == ["approved"] * 3
    assert place.sha256 == "0" * 64 and place.decided_by_name == "director-dina"


def test_only_a_holder_of_a_place_on_the_current_stage_may_decide():
    approval = start()
    with pytest.raises(DecisionNotAllowed):
        approve(approval, FEDOR)
    assert approval.revision == 1 and approval.steps[0].status == "pending"


def test_reject_and_return_need_a_comment_and_reject_ends_with_its_public_reason():
    approval = start()
    for decision in ("reject", "return"):
        with pytest.raises(InvalidDecision):
            approval.decide(actor=LENA, decision=decision, comment="  ", reason=None, at=NOW)
    approval.decide(actor=LENA, decision="reject", comment="internal note", reason="price", at=NOW)
    assert (approval.status, approval.reason, approval.current_stage_no) == ("rejected", "price", None)
    with pytest.raises(ApprovalClosed):
        approve(approval, FEDOR)


def test_quorum_two_of_three_passes_on_the_second_approval_and_one_person_fills_one_place():
    route = parse_route("contract", {"stages": [
        {"name": "legal board", "assignees": [{"role": "legal"}] * 3, "quorum": 2},
        {"name": "director", "role": "director"}]}, 1)
    approval = start(route)
    approve(approval, LENA)
    with pytest.raises(DecisionNotAllowed, match="already decided"):
        approve(approval, LENA)
    approval.decide(actor=LEGAL2, decision="reject", comment="no", reason=None, at=NOW)
    assert approval.status == "in_progress" and approval.current_step.name == "legal board"  # 2 still possible
    approve(approval, LEGAL3)
    assert approval.current_step.name == "director"
    assert sorted(p.status for p in approval.assignments if p.stage_no == 1) == ["approved", "approved", "rejected"]


def test_quorum_fails_once_it_can_no_longer_be_reached():
    route = parse_route("contract", {"stages": [
        {"name": "legal board", "assignees": [{"role": "legal"}] * 3, "quorum": 2}]}, 1)
    approval = start(route)
    approval.decide(actor=LENA, decision="reject", comment="no", reason=None, at=NOW)
    approval.decide(actor=LEGAL2, decision="reject", comment="no", reason="terms", at=NOW)
    assert approval.status == "rejected"
    assert [p.status for p in approval.assignments] == ["rejected", "rejected", "not_needed"]


def test_all_of_named_users_in_parallel():
    route = parse_route("contract", {"stages": [
        {"name": "sign-off", "assignees": [{"user": "legal-lena"}, {"user": "finance-fedor"}]}]}, 1)
    approval = start(route)
    with pytest.raises(DecisionNotAllowed):
        approve(approval, LEGAL2)  # a legal user, but not the named one
    approve(approval, FEDOR)
    assert approval.status == "in_progress"
    approve(approval, LENA)
    assert approval.status == "approved"


def test_a_deputy_decides_on_behalf_of_the_absent_user_and_both_names_are_kept():
    approval = start()
    place = approve(approval, LEGAL2.__class__("u9", "deputy-dmitry", "finance"), principals=[LENA])
    assert place.decided_by_name == "deputy-dmitry" and place.on_behalf_of == "legal-lena"
    assert approval.current_step.name == "finance"


def test_return_for_changes_waits_for_a_new_version_which_reopens_by_policy():
    approval = start()
    approve(approval, LENA)
    approval.decide(actor=FEDOR, decision="return", comment="fix the price", reason="the price in 4.2", at=NOW)
    assert approval.status == "returned" and approval.current_step.name == "finance"
    assert approval.reason == "the price in 4.2"  # what the requester is to change
    with pytest.raises(ApprovalClosed):
        approve(approval, FEDOR)
    reopened = approval.reopen(version_id="v2", sha256="1" * 64, at=NOW, counterparty_verified=False)
    assert reopened == ["legal", "finance"]  # policy "all": legal approved the old hash, so it decides again
    assert approval.status == "in_progress" and approval.current_step.name == "legal" and approval.round == 2
    assert approval.document_sha256 == "1" * 64 and approval.reason is None
    place = approve(approval, LENA)
    assert place.sha256 == "1" * 64 and place.round == 2


def test_reopen_policy_not_passed_keeps_the_stages_already_passed():
    route = parse_route("contract", {"reopen": "not_passed", "stages": SEQUENTIAL.spec()["stages"]}, 1)
    approval = start(route)
    approve(approval, LENA)
    assert approval.reopen(version_id="v2", sha256="1" * 64, at=NOW, counterparty_verified=False) == ["finance"]
    assert [s.status for s in approval.steps] == ["approved", "pending", "waiting"]
    assert [p.status for p in approval.assignments if p.stage_no == 2] == ["superseded", "pending"]
    # The same bytes again, or a finished approval, re-open nothing.
    assert approval.reopen(version_id="v3", sha256="1" * 64, at=NOW, counterparty_verified=False) == []


def test_the_last_stage_waits_for_a_verified_counterparty_when_the_type_needs_one():
    approval = start(needs_verified=True)
    approve(approval, LENA)
    approve(approval, FEDOR)
    assert approval.status == "awaiting_counterparty_verification" and approval.current_step.name == "director"
    with pytest.raises(ApprovalClosed, match="verified"):
        approve(approval, DINA)
    assert approval.counterparty_verified(NOW) is True
    assert approval.status == "in_progress" and approval.current_step.status == "pending"
    approve(approval, DINA)
    assert approval.status == "approved"
    # Already verified at the start: no waiting at all.
    other = start(needs_verified=True, verified=True)
    for actor in (LENA, FEDOR, DINA):
        approve(other, actor, counterparty_verified=True)
    assert other.status == "approved"


def test_a_withdrawal_ends_an_open_approval_whatever_it_waits_for_and_no_finished_one():
    returned = start()
    returned.decide(actor=LENA, decision="return", comment="internal", reason="fix 4.2", at=NOW)
    waiting = start(needs_verified=True)
    approve(waiting, LENA)
    approve(waiting, FEDOR)
    assert waiting.status == "awaiting_counterparty_verification"
    running = start()
    for approval in (returned, waiting, running):
        revision = approval.revision
        assert approval.withdraw(reason="deal lost", at=NOW + timedelta(hours=1))
        assert (approval.status, approval.current_step, approval.reason) == ("withdrawn", None, "deal lost")
        assert approval.revision == revision + 1 and not approval.is_open
        assert not [a for a in approval.assignments if a.status == "pending"]
        assert approval.due_actions(NOW + timedelta(days=3)) == []  # no reminder, no escalation
        assert not approval.withdraw(reason="again", at=NOW)  # once
        with pytest.raises(ApprovalClosed, match="withdrawn"):
            approve(approval, LENA)
    assert [s.status for s in running.steps] == ["not_needed", "waiting", "waiting"]
    assert [s.status for s in waiting.steps] == ["approved", "approved", "not_needed"]
    assert not returned.reopen(version_id="v2", sha256="1" * 64, at=NOW, counterparty_verified=False)

    finished = start()
    finished.decide(actor=LENA, decision="reject", comment="internal", reason="price", at=NOW)
    assert not finished.withdraw(reason="deal lost", at=NOW)
    assert (finished.status, finished.reason) == ("rejected", "price")


def test_reminder_before_due_then_escalation_once_and_the_escalation_role_may_decide():
    approval = start()
    assert approval.due_actions(NOW + timedelta(hours=1)) == []
    assert approval.due_actions(NOW + timedelta(hours=21)) == ["remind"]
    assert approval.due_actions(NOW + timedelta(hours=22)) == []
    assert not approval.overdue(NOW + timedelta(hours=23))
    assert approval.due_actions(NOW + timedelta(hours=25)) == ["escalate"]
    assert approval.due_actions(NOW + timedelta(hours=26)) == []
    assert approval.overdue(NOW + timedelta(hours=25))
    place = approve(approval, DINA)  # director is the legal stage's escalation role
    assert place.via_escalation and approval.current_step.name == "finance"


def test_a_delay_reason_is_recorded_only_by_someone_who_may_decide():
    approval = start()
    with pytest.raises(DecisionNotAllowed):
        approval.record_delay_reason(actor=FEDOR, code="workload", at=NOW)
    step = approval.record_delay_reason(actor=LENA, code="workload", at=NOW)
    assert step.delay_reason_code == "workload" and approval.revision == 2


@pytest.mark.parametrize("spec, message", [
    ({"stages": []}, "at least one stage"),
    ({"stages": [{"name": "x"}]}, "at least one assignee"),
    ({"stages": [{"name": "x", "assignees": [{"role": "legal", "user": "a"}]}]}, "each assignee"),
    ({"stages": [{"name": "x", "assignees": [{"role": "legal"}], "quorum": 2}]}, "quorum"),
    ({"stages": [{"name": "x", "role": "legal", "deadline_hours": -1}]}, "positive"),
    ({"stages": [{"name": "x", "role": "legal", "remind_before_hours": 2}]}, "needs a deadline"),
    ({"stages": [{"name": "x", "role": "legal"}, {"name": "x", "role": "legal"}]}, "used twice"),
    ({"reopen": "sometimes", "stages": [{"name": "x", "role": "legal"}]}, "reopen"),
])
def test_invalid_routes_are_refused_with_a_reason(spec, message):
    with pytest.raises(InvalidRoute, match=message):
        parse_route("contract", spec)


def test_the_shipped_routes_file_parses_and_round_trips(tmp_path):
    from pathlib import Path

    routes = load_routes(Path("ecm_service/approval_routes.json"))
    assert {"contract", "default"} <= set(routes)
    for route in routes.values():
        assert parse_route(route.doc_type, route.spec()).spec() == route.spec()
