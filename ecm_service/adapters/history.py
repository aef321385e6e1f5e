"""The append-only, hash-chained history. Appends are serialised (an advisory lock on
PostgreSQL; SQLite's write lock, taken before the chain's tail is read) so the chain
never forks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from ecm_service.adapters.tables import history

GENESIS = "0" * 64
CHAIN_LOCK = 7_301_552_031  # any constant; names the history chain's advisory lock


def entry_hash(prev_hash: str, entry: dict) -> str:
    canonical = json.dumps([prev_hash, entry], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _entry(*, entity_type, entity_id, action, actor, reason, data, at: datetime) -> dict:
    return {
        "entity_type": entity_type, "entity_id": entity_id, "action": action, "actor": actor, "reason": reason,
        "data": json.loads(json.dumps(data, default=str, ensure_ascii=False)),
        "at": at.astimezone(timezone.utc).isoformat(),
    }


class HistoryLog:
    """Appends wait for the commit by default (`append`): they are chained and inserted
    together, one statement, when the unit of work commits, so the chain's lock is held
    for the last few statements of a transaction rather than from its first append (a
    command group's transaction and a document upload no longer wait for each other's
    whole work). `append_now` writes at once and answers the entry's sequence number;
    it, `append_many` and `of` first write what waits, so entries keep their call order."""

    def __init__(self, session: AsyncSession):
        self.session = session
        self._transaction = None  # the transaction that holds the chain, and the chain's last hash in it
        self._tail = GENESIS
        self._waiting: list[tuple[dict, datetime, Callable[[int], None] | None]] = []

    async def _chain_tail(self) -> str:
        """The last entry's hash, the chain locked until this transaction ends. Locked and
        read once per transaction: later appends in it continue from what it wrote."""
        transaction = self.session.sync_session.get_transaction()
        if transaction is None or transaction is not self._transaction:
            tail = select(history.c.hash).order_by(history.c.seq.desc()).limit(1)
            if self.session.bind.dialect.name == "postgresql":
                await self.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK})
            else:  # the database's write lock, taken before the read (infra.db.SqliteSession)
                tail = tail.with_for_update()
            self._tail = (await self.session.execute(tail)).scalar() or GENESIS
            self._transaction = self.session.sync_session.get_transaction()
        return self._tail

    async def hold(self) -> None:
        """Takes the chain's lock now rather than at the first write (then held until the
        transaction ends): what the transaction reads next, it reads after every other
        writer of history has committed. Serialises work that decides from what another
        such transaction may be writing at the same moment (the CRM merges of a chain)."""
        await self._chain_tail()

    async def append(self, *, entity_type: str, entity_id: str, action: str, actor: str, data: dict,
                     reason: str | None = None, at: datetime | None = None,
                     then: Callable[[int], None] | None = None) -> None:
        """Chained and written when the transaction commits (`flush`); `then` receives the
        entry's sequence number then, before the outbox rows are encoded (an event may
        carry it)."""
        at = at or datetime.now(timezone.utc)
        self._wait(_entry(entity_type=entity_type, entity_id=entity_id, action=action, actor=actor, reason=reason,
                          data=data, at=at), at, then)

    def _wait(self, entry: dict, at: datetime, then: Callable[[int], None] | None = None) -> None:
        self._waiting.append((entry, at, then))

    async def flush(self) -> None:
        """Writes the waiting entries: the chain locked, its tail read, one insert."""
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, []
        prev = await self._chain_tail()
        rows = []
        for entry, at, _ in waiting:
            digest = entry_hash(prev, entry)
            rows.append({**{k: entry[k] for k in ("entity_type", "entity_id", "action", "actor", "reason", "data")},
                         "at": at, "prev_hash": prev, "hash": digest})
            prev = digest
        if any(then is not None for *_, then in waiting):
            seqs = (await self.session.execute(
                insert(history).returning(history.c.seq, sort_by_parameter_order=True), rows)).scalars().all()
            for (*_, then), seq in zip(waiting, seqs, strict=True):
                if then is not None:
                    then(seq)
        else:
            await self.session.execute(insert(history), rows)
        self._tail = prev

    async def append_now(self, *, entity_type: str, entity_id: str, action: str, actor: str, data: dict,
                         reason: str | None = None, at: datetime | None = None) -> int:
        """Written at once (after what waits); returns the entry's sequence number: a
        global, monotonic version of the registry."""
        numbered: list[int] = []
        await self.append(entity_type=entity_type, entity_id=entity_id, action=action, actor=actor, data=data,
                          reason=reason, at=at, then=numbered.append)
        await self.flush()
        return numbered[0]

    async def append_many(self, entries: list[dict], at: datetime | None = None) -> None:
        """Chains many entries in one statement at once (bulk loads). Each item has
        entity_type, entity_id, action, actor, data and optionally reason."""
        at = at or datetime.now(timezone.utc)
        for item in entries:
            self._wait(_entry(at=at, reason=item.get("reason"),
                              **{k: item[k] for k in ("entity_type", "entity_id", "action", "actor", "data")}), at)
        await self.flush()

    async def of(self, entity_type: str, entity_id: str) -> list[dict]:
        await self.flush()
        rows = await self.session.execute(
            select(history.c.seq, history.c.action, history.c.actor, history.c.reason, history.c.data,
                   history.c.at, history.c.hash)
            .where(history.c.entity_type == entity_type, history.c.entity_id == entity_id)
            .order_by(history.c.seq))
        return [dict(r) for r in rows.mappings()]


@dataclass(frozen=True)
class ChainReport:
    entries: int
    first_broken_seq: int | None
    problem: str | None

    @property
    def intact(self) -> bool:
        return self.first_broken_seq is None


async def verify_chain(session: AsyncSession, chunk: int = 5000) -> ChainReport:
    """Recomputes every hash in order; names the first entry that was altered, or whose
    predecessor was removed."""
    prev, count, last_seq = GENESIS, 0, 0
    while True:
        rows = (await session.execute(
            select(history).where(history.c.seq > last_seq).order_by(history.c.seq).limit(chunk))).mappings().all()
        if not rows:
            return ChainReport(count, None, None)
        for row in rows:
            count += 1
            if row["prev_hash"] != prev:
                return ChainReport(count, row["seq"], "previous entry missing or altered")
            entry = _entry(entity_type=row["entity_type"], entity_id=row["entity_id"], action=row["action"],
                           actor=row["actor"], reason=row["reason"], data=row["data"], at=row["at"])
            if entry_hash(prev, entry) != row["hash"]:
                return ChainReport(count, row["seq"], "entry content does not match its hash")
            prev, last_seq = row["hash"], row["seq"]
