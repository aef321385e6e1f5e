"""Approvals follow the route version they started on; each decision is bound to the
content hash of the document version being approved."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

IN_PROGRESS, APPROVED, REJECTED = "in_progress", "approved", "rejected"


class DecisionNotAllowed(Exception):
    pass


class ApprovalClosed(Exception):
    pass


@dataclass
class Stage:
    name: str
    role: str


@dataclass
class Route:
    doc_type: str
    version: int
    stages: list[Stage]


@dataclass
class ApprovalStep:
    id: str
    approval_id: str
    stage_no: int
    name: str
    role: str
    status: str = "waiting"  # waiting -> pending -> approved | rejected
    decided_by: str | None = None
    decided_at: datetime | None = None
    comment: str | None = None


@dataclass
class Approval:
    id: str
    document_id: str
    document_version_id: str
    document_sha256: str
    doc_type: str
    title: str
    route_doc_type: str
    route_version: int
    initiator_ref: str
    correlation_id: str
    created_at: datetime
    updated_at: datetime
    counterparty_id: str | None = None
    counterparty_ref: str | None = None
    status: str = IN_PROGRESS
    current_stage_no: int | None = 1
    revision: int = 1
    reason: str | None = None
    steps: list[ApprovalStep] = field(default_factory=list)

    @property
    def current_step(self) -> ApprovalStep | None:
        return next((s for s in self.steps if s.stage_no == self.current_stage_no), None)

    def decide(self, *, user_id: str, role: str, decision: str, comment: str | None, reason: str | None,
               at: datetime) -> ApprovalStep:
        if self.status != IN_PROGRESS:
            raise ApprovalClosed(f"approval is already {self.status}")
        step = self.current_step
        if step is None or step.role != role:
            raise DecisionNotAllowed(f"the current stage needs role {step.role if step else '?'}, not {role}")
        step.status = APPROVED if decision == "approve" else REJECTED
        step.decided_by, step.decided_at, step.comment = user_id, at, comment
        self.revision += 1
        self.updated_at = at
        if step.status == REJECTED:
            self.status, self.current_stage_no, self.reason = REJECTED, None, reason
            return step
        following = [s for s in self.steps if s.stage_no > step.stage_no]
        if following:
            self.current_stage_no = following[0].stage_no
            following[0].status = "pending"
        else:
            self.status, self.current_stage_no = APPROVED, None
        return step


def start_steps(approval_id: str, route: Route, new_id) -> list[ApprovalStep]:
    steps = [
        ApprovalStep(id=new_id(), approval_id=approval_id, stage_no=i, name=s.name, role=s.role)
        for i, s in enumerate(route.stages, start=1)
    ]
    steps[0].status = "pending"
    return steps
