from datetime import datetime, timezone
from itertools import count

import pytest

from ecm_service.domain.approval import (
    Approval,
    ApprovalClosed,
    DecisionNotAllowed,
    Route,
    Stage,
    start_steps,
)

NOW = datetime.now(timezone.utc)
ROUTE = Route("contract", 1, [Stage("legal", "legal"), Stage("finance", "finance"), Stage("director", "director")])


def new_approval():
    ids = count()
    return Approval(
        id="a", document_id="d", document_version_id="v", document_sha256="0" * 64, doc_type="contract", title="t",
        route_doc_type="contract", route_version=1, initiator_ref="crm:u", correlation_id="c", created_at=NOW,
        updated_at=NOW, steps=start_steps("a", ROUTE, lambda: f"s{next(ids)}"),
    )


def test_stages_run_in_order_and_the_last_approval_closes_it():
    approval = new_approval()
    assert approval.current_step.name == "legal" and approval.revision == 1
    for role in ("legal", "finance"):
        approval.decide(user_id="u", role=role, decision="approve", comment=None, reason=None, at=NOW)
        assert approval.status == "in_progress"
    assert approval.current_step.name == "director"
    approval.decide(user_id="u", role="director", decision="approve", comment="fine", reason=None, at=NOW)
    assert approval.status == "approved" and approval.current_step is None and approval.revision == 4
    assert [s.status for s in approval.steps] == ["approved"] * 3


def test_only_the_current_stage_role_may_decide():
    approval = new_approval()
    with pytest.raises(DecisionNotAllowed):
        approval.decide(user_id="u", role="finance", decision="approve", comment=None, reason=None, at=NOW)
    assert approval.revision == 1 and approval.steps[0].status == "pending"


def test_a_rejection_ends_the_approval_with_its_public_reason():
    approval = new_approval()
    approval.decide(user_id="u", role="legal", decision="reject", comment="internal note", reason="price", at=NOW)
    assert (approval.status, approval.reason, approval.current_stage_no) == ("rejected", "price", None)
    with pytest.raises(ApprovalClosed):
        approval.decide(user_id="u", role="finance", decision="approve", comment=None, reason=None, at=NOW)
