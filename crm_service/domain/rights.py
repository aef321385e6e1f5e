"""Who may change what in the CRM. Everyone in sales reads every organization (that is
how duplicates are avoided); changes are for the owner, their team's manager and admins.

- sales: edits their own organizations, deals, contacts, leads and activities; hands
  their own organization to a colleague of their team;
- manager: everything a sales user can, for every member of their team, and transfers
  ownership within the team;
- admin: everything; auditor: reads everything, changes nothing."""

from __future__ import annotations

from dataclasses import dataclass


class NotAllowed(Exception):
    pass


@dataclass(frozen=True)
class Actor:
    id: str
    role: str
    team: str | None = None


def may_change(actor: Actor, owner_id: str | None, owner_team: str | None) -> bool:
    if actor.role == "admin":
        return True
    if actor.role not in ("sales", "manager"):
        return False
    if owner_id == actor.id:
        return True
    return actor.role == "manager" and actor.team is not None and owner_team == actor.team


def check_may_change(actor: Actor, owner_id: str | None, owner_team: str | None, what: str) -> None:
    if not may_change(actor, owner_id, owner_team):
        raise NotAllowed(f"only the responsible manager, their team's manager or an admin may change this {what}")


def check_may_transfer(actor: Actor, *, owner_id: str | None, owner_team: str | None, new_owner_team: str | None,
                       new_owner_role: str | None) -> None:
    if new_owner_role not in ("sales", "manager", "admin"):
        raise NotAllowed("the new responsible manager must be a sales user, a manager or an admin")
    if actor.role == "admin":
        return
    check_may_change(actor, owner_id, owner_team, "organization")
    if actor.team is not None and new_owner_team != actor.team:
        raise NotAllowed("ownership moves within the team; ask an admin to move it to another team")
