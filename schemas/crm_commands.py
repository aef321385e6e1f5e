"""Commands the CRM accepts on `crm.commands` (its own vocabulary)."""

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.common import Contract


class UpdateApprovalStatusV1(Contract):
    approval_request_id: str
    status: Literal["in_progress", "approved", "rejected"]
    stage: str | None = None
    revision: int
    reason: str | None = None
    registry_approval_id: str
    # The CRM user to notify (the approval's current initiator), when known.
    notify_user_id: str | None = None
    # When the ECM made the change (its event's time), for the request's trace.
    changed_at: datetime | None = None


class UpdateApprovalStatusV2(Contract):
    """The sales view of an approval: status, stage, due date, overdue flag and delay
    reason code as the ECM reports them."""

    approval_request_id: str
    status: Literal["in_progress", "awaiting_counterparty_verification", "returned", "approved", "rejected"]
    stage: str | None = None
    due_at: datetime | None = None
    overdue: bool = False
    delay_reason_code: str | None = None
    revision: int
    reason: str | None = None
    registry_approval_id: str
    notify_user_id: str | None = None
    changed_at: datetime | None = None


def update_approval_status_v1_to_v2(payload: dict) -> dict:
    return {**payload, "overdue": False}


class UpdateApprovalStatusV3(UpdateApprovalStatusV2):
    """v3: `withdrawn`, the ECM's word that an approval the rep took back is closed."""

    status: Literal["in_progress", "awaiting_counterparty_verification", "returned", "approved", "rejected",
                    "withdrawn"]
    withdrawn_by: str | None = None


def update_approval_status_v2_to_v3(payload: dict) -> dict:
    """Nothing was withdrawn before v3."""
    return {**payload, "withdrawn_by": None}


class UpdateOrganizationLinkV1(Contract):
    organization_id: str
    registry_id: str
    # "linked" when the registry holds it as verified; otherwise the registry's status.
    link_status: str = Field(min_length=1, max_length=32)
    registry_name: str
    # Applied only when newer than what the CRM holds (updates may arrive out of order).
    registry_seq: int | None = None


class UpdateOrganizationLinkV2(UpdateOrganizationLinkV1):
    """v2 adds the registry's identifiers: the CRM fills its empty INN, KPP and OGRN
    from a verified record and shows differing ones as a passive difference."""

    registry_inn: str | None = None
    registry_kpp: str | None = None
    registry_ogrn: str | None = None


def update_organization_link_v1_to_v2(payload: dict) -> dict:
    return dict(payload)


UPDATE_APPROVAL_STATUS = "crm.update_approval_status"
UPDATE_ORGANIZATION_LINK = "crm.update_organization_link"
