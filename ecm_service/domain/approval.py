"""Approvals run the route version they started on: sequential stages, each one or more
assignees (by role or by named user) deciding in parallel, all-of or with a quorum.
Every decision is bound to the content hash of the document version it was made on.

Pure rules, no I/O: the service layer loads and saves, and tells the approval what it
cannot know itself (whom an actor stands in for today, whether the counterparty is
verified)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

IN_PROGRESS = "in_progress"
AWAITING_COUNTERPARTY = "awaiting_counterparty_verification"
RETURNED = "returned"
APPROVED, REJECTED = "approved", "rejected"
# The requesting side took its request back before the approval finished.
WITHDRAWN = "withdrawn"
# Not finished: a new document version re-opens these.
OPEN_STATUSES = (IN_PROGRESS, AWAITING_COUNTERPARTY, RETURNED)
FINAL_STATUSES = (APPROVED, REJECTED, WITHDRAWN)

DECISIONS = ("approve", "reject", "return")
REOPEN_POLICIES = ("all", "not_passed")


class DecisionNotAllowed(Exception):
    """The actor holds no open place on the current stage (403)."""


class ApprovalClosed(Exception):
    """The approval is finished or not waiting for decisions (409)."""


class InvalidDecision(ValueError):
    """The decision itself is incomplete, e.g. a rejection without a comment (422)."""


@dataclass(frozen=True)
class Actor:
    id: str
    name: str
    role: str


@dataclass(frozen=True)
class Assignee:
    role: str | None = None
    user: str | None = None  # a user's login name

    def as_dict(self) -> dict:
        return {"user": self.user} if self.user else {"role": self.role}


@dataclass(frozen=True)
class Stage:
    name: str
    assignees: tuple[Assignee, ...]
    quorum: int | None = None  # None: all of the assignees
    deadline_hours: float | None = None
    remind_before_hours: float | None = None
    escalation_role: str | None = None

    @property
    def needed(self) -> int:
        return self.quorum or len(self.assignees)

    @property
    def label(self) -> str:
        return ", ".join(a.user or a.role for a in self.assignees)[:100]


@dataclass(frozen=True)
class Route:
    doc_type: str
    version: int
    stages: tuple[Stage, ...]
    reopen: str = "all"  # on a new document version: restart "all" stages, or only those "not_passed"

    def spec(self) -> dict:
        """The route as data, in the shape the routes file and the admin API use."""
        return {
            "reopen": self.reopen,
            "stages": [
                {k: v for k, v in {
                    "name": s.name, "assignees": [a.as_dict() for a in s.assignees], "quorum": s.quorum,
                    "deadline_hours": s.deadline_hours, "remind_before_hours": s.remind_before_hours,
                    "escalation_role": s.escalation_role,
                }.items() if v is not None}
                for s in self.stages
            ],
        }


@dataclass
class ApprovalStep:
    """One stage of one approval: its spec as it was when the approval started, and its state."""

    id: str
    approval_id: str
    stage_no: int
    name: str
    role: str  # who decides, for display ("legal", "legal, finance", a user name)
    status: str = "waiting"  # waiting -> pending -> approved | rejected | returned
    assignees: list[dict] = field(default_factory=list)
    quorum: int = 1
    deadline_hours: float | None = None
    remind_before_hours: float | None = None
    escalation_role: str | None = None
    due_at: datetime | None = None
    reminded_at: datetime | None = None
    escalated_at: datetime | None = None
    delay_reason_code: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    comment: str | None = None

    def overdue(self, now: datetime) -> bool:
        return self.status == "pending" and self.due_at is not None and now > self.due_at


@dataclass
class Assignment:
    """One place on a stage for one round: filled by its assignee, or their deputy."""

    id: str
    approval_id: str
    stage_no: int
    round: int
    assignee_role: str | None
    assignee_user: str | None
    status: str = "pending"  # pending -> approved | rejected | returned | not_needed | superseded
    decided_by: str | None = None  # user id of whoever acted
    decided_by_name: str | None = None
    on_behalf_of: str | None = None  # user name of the assignee a deputy acted for
    via_escalation: bool = False
    decided_at: datetime | None = None
    comment: str | None = None
    sha256: str | None = None

    def open_to(self, who: Actor) -> bool:
        if self.assignee_user:
            return self.assignee_user == who.name
        return self.assignee_role == who.role


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
    round: int = 1
    reopen_policy: str = "all"
    needs_verified_counterparty: bool = False
    steps: list[ApprovalStep] = field(default_factory=list)
    assignments: list[Assignment] = field(default_factory=list)

    # --- starting -------------------------------------------------------------------------

    @classmethod
    def start(cls, *, route: Route, at: datetime, counterparty_verified: bool, needs_verified_counterparty: bool,
              **attrs) -> Approval:
        approval = cls(route_doc_type=route.doc_type, route_version=route.version, reopen_policy=route.reopen,
                       needs_verified_counterparty=needs_verified_counterparty, created_at=at, updated_at=at,
                       current_stage_no=None, **attrs)
        approval.steps = [
            ApprovalStep(id=str(uuid.uuid4()), approval_id=approval.id, stage_no=no, name=s.name, role=s.label,
                         assignees=[a.as_dict() for a in s.assignees], quorum=s.needed,
                         deadline_hours=s.deadline_hours, remind_before_hours=s.remind_before_hours,
                         escalation_role=s.escalation_role)
            for no, s in enumerate(route.stages, start=1)
        ]
        approval._enter(1, at, counterparty_verified)
        return approval

    # --- reading --------------------------------------------------------------------------

    @property
    def current_step(self) -> ApprovalStep | None:
        return next((s for s in self.steps if s.stage_no == self.current_stage_no), None)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def open_assignments(self, stage_no: int | None = None) -> list[Assignment]:
        stage_no = self.current_stage_no if stage_no is None else stage_no
        return [a for a in self.assignments
                if a.stage_no == stage_no and a.round == self.round and a.status == "pending"]

    def overdue(self, now: datetime) -> bool:
        step = self.current_step
        return bool(self.status == IN_PROGRESS and step and step.overdue(now))

    def place_for(self, actor: Actor, principals: list[Actor] = ()) -> tuple[Assignment, Actor | None, bool]:
        """The open place the actor may fill on the current stage: (place, the person they
        stand in for or None, whether they act through the stage's escalation role)."""
        if self.status == AWAITING_COUNTERPARTY:
            raise ApprovalClosed("the approval waits for the counterparty to be verified in the registry")
        if self.status != IN_PROGRESS:
            raise ApprovalClosed(f"the approval is {self.status}, not waiting for decisions")
        step = self.current_step
        places = sorted(self.open_assignments(), key=lambda a: a.assignee_user is None)  # named places first
        taken = {a.on_behalf_of or a.decided_by_name for a in self.assignments
                 if a.stage_no == step.stage_no and a.round == self.round and a.decided_by}
        for who, behalf in [(actor, None)] + [(p, p) for p in principals]:
            if who.name in taken:
                continue
            for place in places:
                if place.open_to(who):
                    return place, behalf, False
        if step.escalated_at and step.escalation_role == actor.role and actor.name not in taken and places:
            return places[0], None, True
        needs = step.role + (f" (or {step.escalation_role}, escalated)" if step.escalated_at else "")
        if actor.name in taken:
            raise DecisionNotAllowed(f"{actor.name} has already decided on stage {step.name!r}")
        raise DecisionNotAllowed(f"stage {step.name!r} is decided by {needs}; {actor.name} ({actor.role}) "
                                 "holds no open place on it")

    # --- deciding -------------------------------------------------------------------------

    def decide(self, *, actor: Actor, decision: str, comment: str | None, reason: str | None, at: datetime,
               principals: list[Actor] = (), counterparty_verified: bool = False) -> Assignment:
        if decision not in DECISIONS:
            raise InvalidDecision(f"decision must be one of {', '.join(DECISIONS)}")
        if decision in ("reject", "return") and not (comment or "").strip():
            raise InvalidDecision(f"a comment is required to {decision}")
        place, behalf, escalated = self.place_for(actor, list(principals))
        step = self.current_step
        place.status = {"approve": APPROVED, "reject": REJECTED, "return": RETURNED}[decision]
        place.decided_by, place.decided_by_name, place.decided_at = actor.id, actor.name, at
        place.on_behalf_of, place.via_escalation = (behalf.name if behalf else None), escalated
        place.comment, place.sha256 = comment, self.document_sha256
        self.revision += 1
        self.updated_at = at
        decided = [a for a in self.assignments if a.stage_no == step.stage_no and a.round == self.round]
        approvals = sum(a.status == APPROVED for a in decided)
        still_open = sum(a.status == "pending" for a in decided)
        if decision == "return":  # the reason tells the requester what to change
            self._close_stage(step, RETURNED, place, at)
            self.status, self.reason = RETURNED, reason
        elif decision == "reject" and approvals + still_open < step.quorum:
            self._close_stage(step, REJECTED, place, at)
            self.status, self.current_stage_no, self.reason = REJECTED, None, reason
        elif approvals >= step.quorum:
            self._close_stage(step, APPROVED, place, at)
            if step.stage_no == len(self.steps):
                self.status, self.current_stage_no = APPROVED, None
            else:
                self._enter(step.stage_no + 1, at, counterparty_verified)
        return place

    def _close_stage(self, step: ApprovalStep, status: str, place: Assignment, at: datetime) -> None:
        step.status, step.decided_by, step.decided_at, step.comment = status, place.decided_by, at, place.comment
        for other in self.open_assignments(step.stage_no):
            other.status = "not_needed"

    def _enter(self, stage_no: int, at: datetime, counterparty_verified: bool) -> None:
        """Makes a stage current. Policy: where the document type needs a verified
        counterparty, the last stage waits until the registry has verified it."""
        self.current_stage_no = stage_no
        step = self.current_step
        if stage_no == len(self.steps) and self.needs_verified_counterparty and not counterparty_verified:
            self.status, step.status = AWAITING_COUNTERPARTY, "waiting"
            return
        self.status = IN_PROGRESS
        step.status, step.decided_by, step.decided_at, step.comment = "pending", None, None, None
        step.reminded_at = step.escalated_at = step.delay_reason_code = None
        step.due_at = at + timedelta(hours=step.deadline_hours) if step.deadline_hours else None
        for a in step.assignees:
            self.assignments.append(Assignment(
                id=str(uuid.uuid4()), approval_id=self.id, stage_no=stage_no, round=self.round,
                assignee_role=a.get("role"), assignee_user=a.get("user")))

    def counterparty_verified(self, at: datetime) -> bool:
        """The registry verified the counterparty: a waiting last stage opens."""
        if self.status != AWAITING_COUNTERPARTY:
            return False
        self.revision += 1
        self.updated_at = at
        self._enter(self.current_stage_no, at, counterparty_verified=True)
        return True

    # --- a new document version -----------------------------------------------------------

    def reopen(self, *, version_id: str, sha256: str, at: datetime, counterparty_verified: bool) -> list[str]:
        """A new version of the document arrived: decisions made on the old hash no longer
        count. Policy "all" restarts from the first stage; "not_passed" keeps the stages
        already passed and restarts the current one. Returns the names of the stages that
        were re-opened."""
        if not self.is_open or sha256 == self.document_sha256:
            return []
        restart_from = 1 if self.reopen_policy == "all" else (self.current_stage_no or 1)
        reopened = [s.name for s in self.steps if s.stage_no >= restart_from and s.status != "waiting"]
        for a in self.assignments:
            if a.round == self.round and a.status == "pending":
                a.status = "superseded"
        for s in self.steps:
            if s.stage_no >= restart_from:
                s.status, s.decided_by, s.decided_at, s.comment = "waiting", None, None, None
        self.round += 1
        self.document_version_id, self.document_sha256 = version_id, sha256
        self.reason = None
        self.revision += 1
        self.updated_at = at
        self._enter(restart_from, at, counterparty_verified)
        return reopened

    # --- withdrawn by the requesting side ---------------------------------------------------

    def withdraw(self, *, reason: str, at: datetime) -> bool:
        """The requester took the request back: an open approval ends here, its open places
        and its current stage no longer need anyone. A finished one stays as it ended
        (False): its outcome came before the withdrawal did."""
        if not self.is_open:
            return False
        for a in self.open_assignments():  # the current stage's, this round's
            a.status = "not_needed"
        step = self.current_step
        if step is not None and step.status in ("pending", "waiting"):
            step.status, step.decided_at = "not_needed", at
        self.status, self.current_stage_no, self.reason = WITHDRAWN, None, reason
        self.revision += 1
        self.updated_at = at
        return True

    # --- deadlines ------------------------------------------------------------------------

    def due_actions(self, now: datetime) -> list[str]:
        """What the deadline clock owes the current stage now: "remind" before the due
        time, "escalate" after it; each happens once per stage entry."""
        step = self.current_step
        if self.status != IN_PROGRESS or step is None or step.due_at is None:
            return []
        actions = []
        remind_at = step.due_at - timedelta(hours=step.remind_before_hours or 0)
        if step.remind_before_hours and step.reminded_at is None and now >= remind_at and now <= step.due_at:
            step.reminded_at = now
            actions.append("remind")
        if now > step.due_at and step.escalated_at is None:
            step.escalated_at = now
            self.revision += 1
            self.updated_at = now
            actions.append("escalate")
        return actions

    def record_delay_reason(self, *, actor: Actor, principals: list[Actor] = (), code: str,
                            at: datetime) -> ApprovalStep:
        """Only someone who may decide the current stage explains why it is late."""
        self.place_for(actor, list(principals))
        step = self.current_step
        step.delay_reason_code = code
        self.revision += 1
        self.updated_at = at
        return step
