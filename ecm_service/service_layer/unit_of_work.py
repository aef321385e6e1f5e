from ecm_service.adapters import approval_support, repositories, tables
from ecm_service.adapters.history import HistoryLog
from ecm_service.domain.matching import BatchDecisions
from infra.unit_of_work import SqlUnitOfWork


class EcmUnitOfWork(SqlUnitOfWork):
    outbox = tables.outbox
    inbox = tables.inbox

    def _bind_repositories(self, session) -> None:
        self.counterparties = repositories.CounterpartyRepository(session)
        self.external_refs = repositories.ExternalRefRepository(session)
        self.documents = repositories.DocumentRepository(session)
        self.originals = repositories.PaperOriginalRepository(session)
        self.approvals = repositories.ApprovalRepository(session)
        self.history = HistoryLog(session)
        self.routes = approval_support.RouteStore(session)
        self.deputies = approval_support.DeputyRepository(session)
        self.delay_reasons = approval_support.DelayReasonRepository(session)
        self.notifications = approval_support.NotificationRepository(session)
        self.match_hints = BatchDecisions()  # registry.prefetch_matches

    async def _before_commit(self) -> None:
        await self.history.flush()  # the chain's lock is taken here, a few statements before the commit
