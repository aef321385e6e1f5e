from sqlalchemy import bindparam, select

from crm_service.adapters import repositories, tables
from infra.unit_of_work import SqlUnitOfWork

_TEAM_OF = select(tables.user_profiles.c.team).where(tables.user_profiles.c.user_id == bindparam("user_id"))


class CrmUnitOfWork(SqlUnitOfWork):
    outbox = tables.outbox
    inbox = tables.inbox

    def _bind_repositories(self, session) -> None:
        self.organizations = repositories.OrganizationRepository(session)
        self.deals = repositories.DealRepository(session)
        self.documents = repositories.DocumentRepository(session)
        self.approval_requests = repositories.ApprovalRequestRepository(session)
        self.notifications = repositories.NotificationRepository(session)
        self.contacts = repositories.ContactRepository(session)
        self.leads = repositories.LeadRepository(session)
        self.activities = repositories.ActivityRepository(session)

    async def _before_commit(self) -> None:
        await self.approval_requests.flush()

    async def user_role(self, user_id: str) -> str | None:
        return (await self.session.execute(
            select(tables.users.c.role).where(tables.users.c.id == user_id))).scalar()

    async def team_of(self, user_id: str | None) -> str | None:
        if not user_id:
            return None
        return (await self.session.execute(_TEAM_OF, {"user_id": user_id})).scalar()
