"""Reads and writes ECM entities; sessions come from the unit of work."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, fields
from datetime import datetime, timedelta, timezone

from sqlalchemy import bindparam, case, delete, func, insert, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ecm_service.adapters import tables
from ecm_service.domain import matching
from ecm_service.domain.approval import (
    AWAITING_COUNTERPARTY,
    IN_PROGRESS,
    OPEN_STATUSES,
    Approval,
    ApprovalStep,
    Assignment,
)
from ecm_service.domain.counterparty import LIVE, PENDING, VERIFIED, Counterparty
from ecm_service.domain.matching import Known, name_keys
from infra.metrics import DB_ROUND_TRIPS
from infra.table_repository import TableRepository, by_id, insert_into, row_of
from schemas.common import ExternalRef


class ExternalRefRepository:
    """Within one unit of work it remembers what it found, prefetched and attached, so a
    batch of commands asks once for all its references (`prefetch`) and not per command.
    Renames, detaches and moves forget everything. Likewise it remembers which references
    another system merged away (`prefetch_merges`, `survivor_of`)."""

    def __init__(self, session: AsyncSession):
        self.session = session
        self._known: dict[tuple[str, str, str], str | None] = {}
        self._merged_into: dict[tuple[str, str, str], str | None] = {}  # None: never merged

    _FIND = select(tables.external_refs.c.entity_id).where(
        tables.external_refs.c.entity_type == bindparam("entity_type"),
        tables.external_refs.c.system == bindparam("system"),
        tables.external_refs.c.external_id == bindparam("external_id"))

    async def find(self, entity_type: str, ref: ExternalRef) -> str | None:
        key = (entity_type, ref.system, ref.id)
        if key in self._known:
            return self._known[key]
        found = (await self.session.execute(
            self._FIND, {"entity_type": entity_type, "system": ref.system, "external_id": ref.id})).scalar()
        if found is not None:
            self._known[key] = found
        return found

    async def prefetch(self, entity_type: str, refs: Iterable[ExternalRef]) -> None:
        """Looks these references up together (one statement per system and 1,000 ids);
        `find` then answers them from memory."""
        by_system: dict[str, set[str]] = {}
        for ref in refs:
            if (entity_type, ref.system, ref.id) not in self._known:
                by_system.setdefault(ref.system, set()).add(ref.id)
        for system, ids in by_system.items():
            found = await self.find_many(entity_type, system, sorted(ids))
            self._known.update(((entity_type, system, i), found[i][0] if i in found else None) for i in ids)

    async def attach(self, entity_type: str, entity_id: str, ref: ExternalRef) -> None:
        self.session.insert_later(tables.external_refs, {
            "entity_type": entity_type, "entity_id": entity_id, "system": ref.system, "external_id": ref.id,
            "created_at": datetime.now(timezone.utc)})
        self._known[(entity_type, ref.system, ref.id)] = entity_id

    async def attach_many(self, entity_type: str, pairs: list[tuple[str, ExternalRef]]) -> None:
        """(entity id, ref) pairs in one statement."""
        if pairs:
            now = datetime.now(timezone.utc)
            await self.session.execute(insert(tables.external_refs), [
                {"entity_type": entity_type, "entity_id": entity_id, "system": ref.system, "external_id": ref.id,
                 "created_at": now} for entity_id, ref in pairs])
            self._known.update(((entity_type, ref.system, ref.id), entity_id) for entity_id, ref in pairs)

    async def find_many(self, entity_type: str, system: str, external_ids: list[str]) -> dict[str, tuple]:
        """external id -> (entity id, attached at) for those of the ids that are known."""
        t = tables.external_refs
        found = {}
        for start in range(0, len(external_ids), 1000):
            rows = await self.session.execute(select(t.c.external_id, t.c.entity_id, t.c.created_at).where(
                t.c.entity_type == entity_type, t.c.system == system,
                t.c.external_id.in_(external_ids[start:start + 1000])))
            found.update((external_id, (entity_id, at)) for external_id, entity_id, at in rows)
        return found

    async def rename(self, entity_type: str, ref: ExternalRef, to: ExternalRef) -> None:
        t = tables.external_refs
        self._known.clear()
        await self.session.execute(
            update(t).where(t.c.entity_type == entity_type, t.c.system == ref.system, t.c.external_id == ref.id)
            .values(system=to.system, external_id=to.id))

    async def detach(self, entity_type: str, ref: ExternalRef) -> None:
        t = tables.external_refs
        self._known.clear()
        await self.session.execute(
            delete(t).where(t.c.entity_type == entity_type, t.c.system == ref.system, t.c.external_id == ref.id))

    async def _merges_of(self, entity_type: str, refs: Iterable[ExternalRef]) -> None:
        """Whether each of these references was merged away, and into which, remembered
        (one statement per system and 1,000 ids for those not known yet)."""
        by_system: dict[str, set[str]] = {}
        for ref in refs:
            if (entity_type, ref.system, ref.id) not in self._merged_into:
                by_system.setdefault(ref.system, set()).add(ref.id)
        m = tables.external_ref_merges
        for system, id_set in by_system.items():
            ids = sorted(id_set)
            for start in range(0, len(ids), 1000):
                chunk = ids[start:start + 1000]
                rows = await self.session.execute(select(m.c.merged_id, m.c.survivor_id).where(
                    m.c.entity_type == entity_type, m.c.system == system, m.c.merged_id.in_(chunk)))
                merged = dict(rows.all())
                self._merged_into.update(((entity_type, system, i), merged.get(i)) for i in chunk)

    async def prefetch_merges(self, entity_type: str, refs: Iterable[ExternalRef]) -> None:
        """Whether another system merged away those of these references that are attached
        to no record (known as such from `prefetch`), asked together; `survivor_of` then
        answers them from memory."""
        await self._merges_of(entity_type, [ref for ref in refs if (entity_type, ref.system, ref.id) in self._known
                                            and self._known[(entity_type, ref.system, ref.id)] is None])

    async def survivor_of(self, entity_type: str, ref: ExternalRef) -> ExternalRef | None:
        """Where a reference another system merged away lives now: the last survivor of
        its recorded merges (`record_merge`), or None when it was never merged. For a
        message about an organization that reaches the registry after its merge (a dead
        letter replayed, say), so that it names the organization the merge left."""
        [survivor] = await self.survivors_of(entity_type, [ref])
        return survivor

    async def survivors_of(self, entity_type: str, refs: list[ExternalRef]) -> list[ExternalRef | None]:
        """`survivor_of` for each of these references, all together (one statement for
        each step of the longest chain)."""
        survivors = await self._follow_merges(entity_type, [(ref, {ref.id}) for ref in refs])
        return [survivor if survivor != ref else None for ref, survivor in zip(refs, survivors, strict=True)]

    async def last_survivors(self, entity_type: str,
                             pairs: list[tuple[ExternalRef, ExternalRef]]) -> list[ExternalRef]:
        """For each (ref, short_of): the reference `ref` lives on now, itself or where the
        merges recorded for it (`record_merge`) lead, followed to the end, but never onto
        `short_of` (the one being merged; a cycle ends where it would close). All of them
        a merge at a time (one statement for each step of the longest chain). Read afresh,
        not from what this unit of work remembers: a merge asks under the history chain's
        lock, which another replica's merges have all committed before."""
        self._merged_into.clear()
        return await self._follow_merges(entity_type, [(ref, {ref.id, short_of.id}) for ref, short_of in pairs])

    async def last_survivor(self, entity_type: str, ref: ExternalRef, *, short_of: ExternalRef) -> ExternalRef:
        [survivor] = await self.last_survivors(entity_type, [(ref, short_of)])
        return survivor

    async def _follow_merges(self, entity_type: str,
                             starts: list[tuple[ExternalRef, set[str]]]) -> list[ExternalRef]:
        """Each reference followed along its recorded merges, never onto an id of its set."""
        current, seen = [ref for ref, _ in starts], [ids for _, ids in starts]
        moving = list(range(len(starts)))
        while moving:
            await self._merges_of(entity_type, [current[i] for i in moving])
            still = []
            for i in moving:
                survivor = self._merged_into[(entity_type, current[i].system, current[i].id)]
                if survivor is not None and survivor not in seen[i]:
                    seen[i].add(survivor)
                    current[i] = ExternalRef(system=current[i].system, id=survivor)
                    still.append(i)
            moving = still
        return current

    async def record_merge(self, entity_type: str, merged: ExternalRef, survivor: ExternalRef, at: datetime) -> None:
        """Remembers that `merged` now lives on `survivor` (the same system's)."""
        m = tables.external_ref_merges
        await self.session.execute(delete(m).where(
            m.c.entity_type == entity_type, m.c.system == merged.system, m.c.merged_id == merged.id))
        await self.session.execute(insert(m).values(
            entity_type=entity_type, system=merged.system, merged_id=merged.id, survivor_id=survivor.id,
            merged_at=at))
        self._merged_into[(entity_type, merged.system, merged.id)] = survivor.id

    async def merges_still_attached(self, entity_type: str) -> list[dict]:
        """Recorded merges whose merged reference is still attached to a record (it was
        kept: the survivor's reference was on another one), oldest first: system,
        merged_id, survivor_id, merged_at, entity_id (the merged reference's record).
        Those the steward declared distinct stay among them (their references stay too)."""
        m, r = tables.external_ref_merges, tables.external_refs
        rows = await self.session.execute(
            select(m.c.system, m.c.merged_id, m.c.survivor_id, m.c.merged_at, r.c.entity_id)
            .join(r, (r.c.entity_type == m.c.entity_type) & (r.c.system == m.c.system)
                  & (r.c.external_id == m.c.merged_id))
            .where(m.c.entity_type == entity_type).order_by(m.c.merged_at, m.c.merged_id))
        return [dict(row) for row in rows.mappings()]

    async def move_all(self, entity_type: str, from_id: str, to_id: str) -> None:
        t = tables.external_refs
        self._known.clear()
        await self.session.execute(
            update(t).where(t.c.entity_type == entity_type, t.c.entity_id == from_id).values(entity_id=to_id))

    async def refs_of(self, entity_type: str, entity_id: str) -> list[ExternalRef]:
        t = tables.external_refs
        rows = await self.session.execute(
            select(t.c.system, t.c.external_id)
            .where(t.c.entity_type == entity_type, t.c.entity_id == entity_id)
            .order_by(t.c.created_at)
        )
        return [ExternalRef(system=s, id=i) for s, i in rows]


GENERIC_TTL_S = 3600.0
_GENERIC_KEYS: dict[str, float] = {}  # key -> monotonic time until which it is known generic


async def _pg_fetch(session: AsyncSession, sql: str, *args) -> list:
    """Rows of a read on PostgreSQL straight from the driver (asyncpg), inside the
    session's transaction: the matcher's hot reads return tens of thousands of rows a
    batch, and SQLAlchemy's per-row processing costs more than the query."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    DB_ROUND_TRIPS.inc()
    return await raw.driver_connection.fetch(sql, *args)


def name_key_rows(records: list[tuple[str, str, str]]) -> list[dict]:
    """(id, name, status) -> the rows of the blocking keys of each live record."""
    return [{"key": key, "counterparty_id": record_id} for record_id, name, status in records if status in LIVE
            for key in name_keys(name or "")]


async def write_name_keys(session: AsyncSession, records: list[tuple[str, str, str]], *, replace: bool = True) -> None:
    """(id, name, status) -> the blocking keys of each live record; a record that is no
    longer live (merged, rejected, archived) keeps none."""
    k = tables.counterparty_name_keys
    if replace and records:
        await session.execute(delete(k).where(k.c.counterparty_id.in_([r[0] for r in records])))
    if rows := name_key_rows(records):
        await session.execute(insert(k), rows)


class CounterpartyRepository(TableRepository):
    """Remembers, within one unit of work, the status of each record it read or wrote
    (`status_of`): starting a batch's approvals asks once for all their counterparties."""

    table, entity = tables.counterparties, Counterparty

    def __init__(self, session: AsyncSession):
        super().__init__(session)
        self._statuses: dict[str, str] = {}

    async def get(self, item_id: str, *, for_update: bool = False) -> Counterparty | None:
        record = await super().get(item_id, for_update=for_update)
        if record is not None:
            self._statuses[record.id] = record.status
        return record

    async def get_key_shared(self, counterparty_id: str) -> Counterparty | None:
        """The record read `FOR KEY SHARE`: the steward's actions, which lock it
        `FOR UPDATE`, wait for this transaction or are waited for; other readers and
        other key-share lockers are not held up."""
        t = self.table
        row = (await self.session.execute(select(t).where(t.c.id == counterparty_id)
                                          .with_for_update(read=True, key_share=True))).mappings().first()
        if row is None:
            return None
        self._statuses[row["id"]] = row["status"]
        return Counterparty(**row)

    async def status_of(self, counterparty_id: str) -> str | None:
        """The record's status, or None when there is no such record."""
        if counterparty_id not in self._statuses:
            await self.get(counterparty_id)
        return self._statuses.get(counterparty_id)

    async def prefetch_statuses(self, ids: Iterable[str]) -> None:
        t = self.table
        wanted = sorted(set(ids) - self._statuses.keys())
        for start in range(0, len(wanted), 1000):
            rows = await self.session.execute(select(t.c.id, t.c.status).where(t.c.id.in_(wanted[start:start + 1000])))
            self._statuses.update((id_, status) for id_, status in rows)

    async def mark_not_duplicates(self, first: str, second: str, *, by: str, reason: str, at) -> bool:
        a, b = sorted((first, second))
        t = tables.not_duplicates
        if (await self.session.execute(select(t.c.first_id).where(t.c.first_id == a, t.c.second_id == b))).first():
            return False
        await self.session.execute(insert(t).values(first_id=a, second_id=b, decided_by=by, reason=reason,
                                                    decided_at=at))
        return True

    async def not_duplicate_pairs(self, counterparty_ids: list[str]) -> set[tuple[str, str]]:
        """The pairs declared distinct that involve any of these records, each as (lower
        id, higher id) (one statement per 1,000 ids)."""
        t = tables.not_duplicates
        pairs: set[tuple[str, str]] = set()
        for start in range(0, len(counterparty_ids), 1000):
            chunk = counterparty_ids[start:start + 1000]
            rows = await self.session.execute(select(t.c.first_id, t.c.second_id).where(
                t.c.first_id.in_(chunk) | t.c.second_id.in_(chunk)))
            pairs.update((a, b) for a, b in rows)
        return pairs

    async def not_duplicates_of(self, counterparty_id: str) -> list[str]:
        t = tables.not_duplicates
        rows = await self.session.execute(select(t.c.first_id, t.c.second_id).where(
            (t.c.first_id == counterparty_id) | (t.c.second_id == counterparty_id)))
        return [b if a == counterparty_id else a for a, b in rows]

    async def similar(self, *, inn: str | None, normalized_name: str | None, exclude: list[str],
                      limit: int) -> list[Counterparty]:
        t = self.table
        keys = [t.c.inn == inn] if inn else []
        if normalized_name:
            from ecm_service.domain.names import split_legal_form

            _, core = split_legal_form(normalized_name)
            keys.append(t.c.normalized_name.contains(core, autoescape=True) if len(core) >= 3
                        else t.c.normalized_name == normalized_name)
        if not keys:
            return []
        rows = await self.session.execute(
            select(t).where(or_(*keys), t.c.id.not_in(exclude), t.c.status.not_in(("merged", "rejected")))
            .order_by(t.c.created_at).limit(limit))
        return [Counterparty(**r) for r in rows.mappings()]

    async def search(self, *, text: str | None, status: str | None, limit: int) -> list[Counterparty]:
        """By INN or OGRN when the text is digits, else by the words of the normalised
        name, in any order ("сбербанк пао" finds 'ПАО "Сбербанк России"'); text with no
        word in it (punctuation only) by the name as typed, `%` and `_` taken as letters."""
        from ecm_service.domain.names import normalize_name

        t = self.table
        query = select(t).order_by(t.c.name).limit(limit)
        text = (text or "").strip()
        if text.isdigit():
            query = query.where(or_(t.c.inn == text, t.c.ogrn == text))
        elif words := normalize_name(text).split():
            query = query.where(*(t.c.normalized_name.contains(w, autoescape=True) for w in words))
        elif text:
            query = query.where(t.c.name.contains(text, autoescape=True))
        if status:
            query = query.where(t.c.status == status)
        return [Counterparty(**r) for r in (await self.session.execute(query)).mappings()]

    async def steward_queue(self, limit: int) -> tuple[list[dict], dict]:
        """The pending records in the order the steward should take them: those an approval
        waits on (its last stage needs a verified counterparty) first, longest waiting
        first; then those with an approval still under way, which may come to wait; then
        the rest, oldest first. Each with its open and waiting approvals and since when
        the first of them waits; and the whole queue's counts (the page shows `limit`).
        Before, the queue was the first hundred by name: in a registry with thousands of
        pending records, one holding up a contract could sit out of sight."""
        t, a = self.table, tables.approvals
        waiting = case((a.c.status == AWAITING_COUNTERPARTY, 1), else_=0)
        held = (select(a.c.counterparty_id, func.count().label("open_approvals"),
                       func.sum(waiting).label("waiting_approvals"),
                       func.min(case((a.c.status == AWAITING_COUNTERPARTY, a.c.updated_at))).label("waiting_since"))
                .where(a.c.status.in_(OPEN_STATUSES), a.c.counterparty_id.is_not(None))
                .group_by(a.c.counterparty_id).subquery())
        # The whole queue's counts as window functions: computed before the LIMIT, in the
        # same statement (the aggregate over the open approvals runs once).
        rows = (await self.session.execute(
            select(t, held.c.open_approvals, held.c.waiting_approvals, held.c.waiting_since,
                   func.count().over().label("pending_total"),
                   func.count(held.c.counterparty_id).over().label("with_open_total"),
                   func.count(case((held.c.waiting_approvals > 0, 1))).over().label("holding_total"))
            .select_from(t.outerjoin(held, held.c.counterparty_id == t.c.id))
            .where(t.c.status == PENDING)
            .order_by(held.c.waiting_since.is_(None), held.c.waiting_since, held.c.open_approvals.is_(None),
                      t.c.created_at, t.c.id)
            .limit(limit))).mappings().all()
        queue = [{"record": Counterparty(**{k: r[k] for k in t.c.keys()}),
                  "open_approvals": r["open_approvals"] or 0, "waiting_approvals": r["waiting_approvals"] or 0,
                  "waiting_since": r["waiting_since"]} for r in rows]
        first = rows[0] if rows else {}
        return queue, {"pending": first.get("pending_total", 0), "with_open_approvals": first.get("with_open_total", 0),
                       "holding_approvals": first.get("holding_total", 0)}

    async def add(self, item: Counterparty) -> None:
        """Written with the next statement or the commit (with its name keys), together
        with the other records a batch of syncs creates."""
        self.session.insert_later(self.table, row_of(item))
        self.session.insert_later(tables.counterparty_name_keys, name_key_rows([(item.id, item.name, item.status)]))
        self._statuses[item.id] = item.status

    async def save(self, item: Counterparty) -> None:
        await super().save(item)
        self._statuses[item.id] = item.status
        await write_name_keys(self.session, [(item.id, item.name, item.status)])

    async def name_postings(self, keys: Iterable[str]) -> dict[str, list[str]]:
        """The records under each blocking key shared by at most `Thresholds.max_postings`
        records.
        A key shared by more is generic: its rows are counted in the index, never sent,
        and it is remembered for a while and not asked again."""
        cap = matching.THRESHOLDS.max_postings
        now = time.monotonic()
        wanted = [key for key in set(keys) if _GENERIC_KEYS.get(key, 0.0) < now]
        k = tables.counterparty_name_keys
        found: dict[str, list[str]] = {}
        postgres = self.session.get_bind().dialect.name == "postgresql"
        for start in range(0, len(wanted), 5000):
            chunk = wanted[start:start + 5000]
            if postgres:
                # Each key's index range is read up to one past the cap and comes back as
                # one row: its records, or NULL when it is generic.
                for key, ids in await _pg_fetch(
                        self.session,
                        "SELECT w.key, CASE WHEN count(*) > $2 THEN NULL ELSE array_agg(p.counterparty_id) END "
                        "FROM unnest($1::varchar[]) AS w(key) CROSS JOIN LATERAL "
                        "(SELECT counterparty_id FROM counterparty_name_keys WHERE key = w.key LIMIT $3) AS p "
                        "GROUP BY w.key", chunk, cap, cap + 1):
                    found[key] = ids if ids is not None else [None] * (cap + 1)
            else:
                numbered = select(k.c.key, k.c.counterparty_id,
                                  func.row_number().over(partition_by=k.c.key).label("n")) \
                    .where(k.c.key.in_(chunk)).subquery()
                query = select(numbered.c.key, numbered.c.counterparty_id).where(numbered.c.n <= cap + 1)
                for key, counterparty_id in (await self.session.execute(query)).all():
                    found.setdefault(key, []).append(counterparty_id)
        for key in [key for key, ids in found.items() if len(ids) > cap]:
            del found[key]
            if len(_GENERIC_KEYS) > 100_000:
                _GENERIC_KEYS.clear()
            _GENERIC_KEYS[key] = now + GENERIC_TTL_S
        return found

    async def live_brief(self, *, ids: Iterable[str] = (), inns: Iterable[str] = (),
                         ogrns: Iterable[str] = ()) -> list[Known]:
        """What matching needs of the verified and pending records with one of these ids,
        INNs or OGRNs (indexed)."""
        t = self.table
        found: dict[str, Known] = {}
        columns = (t.c.id, t.c.name, t.c.status, t.c.inn, t.c.kpp, t.c.ogrn, t.c.match_name)
        postgres = self.session.get_bind().dialect.name == "postgresql"
        for column, values in ((t.c.id, ids), (t.c.inn, inns), (t.c.ogrn, ogrns)):
            values = sorted(set(v for v in values if v))
            for start in range(0, len(values), 5000):
                chunk = values[start:start + 5000]
                if postgres:
                    rows = await _pg_fetch(
                        self.session, f"SELECT {', '.join(c.name for c in columns)} FROM {t.name} "
                        f"WHERE {column.name} = ANY($1::varchar[]) AND status = ANY($2::varchar[])",
                        chunk, sorted(LIVE))
                else:
                    rows = (await self.session.execute(select(*columns).where(
                        column.in_(chunk), t.c.status.in_(LIVE)))).tuples()
                for id_, name, status, inn, kpp, ogrn, match_name in rows:
                    if id_ not in found:
                        found[id_] = Known(id_, name, status, inn, kpp, ogrn, (), match_name)
        return list(found.values())

    async def add_match_decision(self, **values) -> None:
        self.session.insert_later(tables.match_decisions, values)

    @staticmethod
    def generic_keys(keys) -> set[str]:
        """Those of the keys `name_postings` now skips as generic."""
        now = time.monotonic()
        return {key for key in keys if _GENERIC_KEYS.get(key, 0.0) >= now}

    async def match_decisions_of(self, counterparty_ids: list[str]) -> list[dict]:
        m = tables.match_decisions
        rows = await self.session.execute(select(m).where(m.c.counterparty_id.in_(counterparty_ids))
                                          .order_by(m.c.created_at.desc()))
        return [dict(r) for r in rows.mappings()]

    async def review_decisions(self, counterparty_id: str, *, review: str, action: str, at) -> int:
        m = tables.match_decisions
        result = await self.session.execute(
            update(m).where(m.c.counterparty_id == counterparty_id, m.c.review.is_(None))
            .values(review=review, review_action=action, reviewed_at=at))
        return result.rowcount

    async def verified_with_inn(self, inn: str) -> list[Counterparty]:
        t = self.table
        rows = await self.session.execute(select(t).where(t.c.inn == inn, t.c.status == VERIFIED))
        return [Counterparty(**r) for r in rows.mappings()]


class PaperOriginalRepository:
    """The paper originals of documents (`tables.paper_originals`)."""

    def __init__(self, session: AsyncSession):
        self.session = session

    async def of_document(self, document_id: str, *, number: int | None = None) -> list[dict]:
        """A document's originals by number (or the one of `number`), each with its
        version's number and its holder's name."""
        p, v, u = tables.paper_originals, tables.document_versions, tables.users
        query = (select(p, v.c.version_no, v.c.sha256, u.c.name.label("holder_name"))
                 .join(v, v.c.id == p.c.version_id).outerjoin(u, u.c.id == p.c.holder_id)
                 .where(p.c.document_id == document_id).order_by(p.c.number))
        rows = await self.session.execute(query if number is None else query.where(p.c.number == number))
        return [dict(r) for r in rows.mappings()]

    async def get(self, document_id: str, number: int, *, for_update: bool = False) -> dict | None:
        p = tables.paper_originals
        query = select(p).where(p.c.document_id == document_id, p.c.number == number)
        row = (await self.session.execute(query.with_for_update() if for_update else query)).mappings().first()
        return dict(row) if row else None

    async def next_number(self, document_id: str) -> int:
        p = tables.paper_originals
        return (await self.session.scalar(
            select(func.coalesce(func.max(p.c.number), 0)).where(p.c.document_id == document_id))) + 1

    async def add(self, **values) -> None:
        await self.session.execute(insert(tables.paper_originals).values(**values))

    async def update(self, original_id: str, **values) -> None:
        p = tables.paper_originals
        await self.session.execute(update(p).where(p.c.id == original_id).values(**values))

    async def staff(self) -> list[dict]:
        """The ECM's people an original may be handed to (id, name, role), by name: every
        user but the services' integration users."""
        u = tables.users
        rows = await self.session.execute(select(u.c.id, u.c.name, u.c.role).where(u.c.role != "integration")
                                          .order_by(u.c.name))
        return [dict(r) for r in rows.mappings()]

    async def user_exists(self, user_id: str) -> bool:
        u = tables.users
        return await self.session.scalar(select(u.c.id).where(u.c.id == user_id, u.c.role != "integration")) is not None

    async def handed_out(self, *, holder_id: str | None = None, limit: int = 500) -> list[dict]:
        """Originals out of their place, the longest overdue first, then by the date
        they are due back; each with its document's title and type, its version's number
        and its holder's name."""
        p, d, u, a, v = (tables.paper_originals, tables.documents, tables.users, tables.approvals,
                         tables.document_versions)
        latest_approval = (select(a.c.id).where(a.c.document_id == p.c.document_id)
                           .order_by(a.c.created_at.desc(), a.c.id.desc()).limit(1).scalar_subquery())
        query = (select(p, d.c.title, d.c.doc_type, v.c.version_no, u.c.name.label("holder_name"),
                        latest_approval.label("approval_id"))
                 .join(d, d.c.id == p.c.document_id).join(v, v.c.id == p.c.version_id)
                 .outerjoin(u, u.c.id == p.c.holder_id)
                 .where(p.c.state == "handed_out"))
        if holder_id is not None:
            query = query.where(p.c.holder_id == holder_id)
        rows = await self.session.execute(query.order_by(p.c.due_back, p.c.handed_out_at, p.c.id).limit(limit))
        return [dict(r) for r in rows.mappings()]


class DocumentRepository:
    def __init__(self, session: AsyncSession):
        self.session = session
        self._versions: dict[str, list[dict]] = {}  # document id -> its versions, oldest first

    async def add_document(self, **values) -> None:
        await self.session.execute(insert_into(tables.documents), values)

    async def get(self, document_id: str, *, for_update: bool = False) -> dict | None:
        row = (await self.session.execute(by_id(tables.documents, for_update), {"item_id": document_id})
               ).mappings().first()
        return dict(row) if row else None

    async def update_document(self, document_id: str, **values) -> None:
        t = tables.documents
        await self.session.execute(update(t).where(t.c.id == document_id).values(**values))

    async def retention_expired(self, now, *, for_update: bool = False) -> list[dict]:
        """Documents whose retention ran out and that are not disposed of yet. Locked for
        a disposal: a legal hold or a new version committing meanwhile is waited for and
        read as committed (in id order, as any two disposals lock them)."""
        t = tables.documents
        query = select(t).where(t.c.retain_until <= now, t.c.disposed_at.is_(None))
        if for_update:
            query = query.order_by(t.c.id).with_for_update()
        rows = await self.session.execute(query)
        return sorted((dict(r) for r in rows.mappings()), key=lambda d: (d["retain_until"], d["id"]))

    async def content_used_elsewhere(self, sha256: str, document_id: str) -> bool:
        v, d = tables.document_versions, tables.documents
        found = await self.session.execute(
            select(v.c.id).join(d, d.c.id == v.c.document_id)
            .where(v.c.sha256 == sha256, v.c.document_id != document_id, d.c.disposed_at.is_(None)).limit(1))
        return found.first() is not None

    async def versions(self, document_id: str) -> list[dict]:
        v = tables.document_versions
        rows = await self.session.execute(select(v).where(v.c.document_id == document_id).order_by(v.c.version_no))
        return [dict(r) for r in rows.mappings()]

    async def add_version(self, **values) -> None:
        await self.session.execute(insert_into(tables.document_versions), values)

    async def add_many(self, documents: list[dict], versions: list[dict]) -> None:
        """New documents and their versions, one statement for each table."""
        if documents:
            await self.session.execute(insert(tables.documents), documents)
        if versions:
            await self.session.execute(insert(tables.document_versions), versions)

    async def to_look_at_again(self, document_ids: list[str], *, retention_ends_by: datetime) -> set[str]:
        """Those of the documents that were disposed of or whose retention ends by then
        (a transfer looks at them again under their lock)."""
        t = tables.documents
        found: set[str] = set()
        for start in range(0, len(document_ids), 1000):
            found.update((await self.session.execute(select(t.c.id).where(
                t.c.id.in_(document_ids[start:start + 1000]),
                or_(t.c.disposed_at.is_not(None), t.c.retain_until <= retention_ends_by)))).scalars())
        return found

    async def latest_versions(self, document_ids: list[str]) -> dict[str, dict]:
        """document id -> its latest version, for those of the ids that have one."""
        v = tables.document_versions
        latest: dict[str, dict] = {}
        for start in range(0, len(document_ids), 1000):
            rows = await self.session.execute(
                select(v).where(v.c.document_id.in_(document_ids[start:start + 1000])).order_by(v.c.version_no))
            latest.update((row["document_id"], dict(row)) for row in rows.mappings())
        return latest

    async def version_and_latest(self, document_id: str, version_id: str) -> tuple[dict | None, dict | None]:
        """(that version if it belongs to the document, the document's latest version):
        one statement, or none after `prefetch_versions` of the document."""
        if document_id not in self._versions:
            await self.prefetch_versions([document_id])
        versions = self._versions[document_id]
        return next((v for v in versions if v["id"] == version_id), None), (versions[-1] if versions else None)

    async def prefetch_versions(self, document_ids: Iterable[str]) -> None:
        """Loads the versions of these documents together (a version never changes once
        stored; within this unit of work no other is added to them), for
        `version_and_latest`."""
        v = tables.document_versions
        wanted = sorted(set(document_ids) - self._versions.keys())
        for start in range(0, len(wanted), 1000):
            part = wanted[start:start + 1000]
            self._versions.update((document_id, []) for document_id in part)
            rows = await self.session.execute(select(v).where(v.c.document_id.in_(part)).order_by(v.c.version_no))
            for row in rows.mappings():
                self._versions[row["document_id"]].append(dict(row))


_APPROVAL_COLUMNS = [f.name for f in fields(Approval) if f.name not in ("steps", "assignments")]


class ApprovalRepository:
    def __init__(self, session: AsyncSession):
        self.session = session
        self._early: dict[tuple[str, str], dict | None] = {}  # withdrawals before start, looked up

    async def remember_withdrawal_before_start(self, ref: ExternalRef, **values) -> bool:
        """Keeps a withdrawal whose approval has not started; False if one is kept already."""
        if await self.withdrawal_before_start(ref) is not None:
            return False
        row = {"system": ref.system, "external_id": ref.id, **values}
        await self.session.execute(insert(tables.withdrawals_before_start).values(**row))
        self._early[(ref.system, ref.id)] = row
        return True

    async def prefetch_withdrawals_before_start(self, refs: list[ExternalRef]) -> None:
        """Looks the starts of a batch up at once (one statement; the table is almost
        always empty), so that `withdrawal_before_start` answers them from memory."""
        wanted = sorted({(r.system, r.id) for r in refs} - set(self._early))
        w = tables.withdrawals_before_start
        for system in sorted({system for system, _ in wanted}):
            ids = [id_ for s, id_ in wanted if s == system]
            for start in range(0, len(ids), 1000):
                rows = await self.session.execute(select(w).where(
                    w.c.system == system, w.c.external_id.in_(ids[start:start + 1000])))
                self._early.update({(r["system"], r["external_id"]): dict(r) for r in rows.mappings()})
        for key in wanted:
            self._early.setdefault(key, None)

    async def withdrawals_met_by_start(self) -> list[tuple[dict, str]]:
        """Kept withdrawals whose approval exists after all, with its id: a start and its
        withdrawal taken at the same moment by two replicas, each not seeing the other's
        uncommitted work (the deadline clock settles them)."""
        w, e = tables.withdrawals_before_start, tables.external_refs
        rows = await self.session.execute(
            select(w, e.c.entity_id).join(e, (e.c.entity_type == "approval") & (e.c.system == w.c.system)
                                          & (e.c.external_id == w.c.external_id)))
        return [({k: r[k] for k in w.c.keys()}, r["entity_id"]) for r in rows.mappings()]

    async def withdrawal_before_start(self, ref: ExternalRef) -> dict | None:
        key = (ref.system, ref.id)
        if key not in self._early:
            w = tables.withdrawals_before_start
            row = (await self.session.execute(select(w).where(w.c.system == ref.system, w.c.external_id == ref.id))
                   ).mappings().first()
            self._early[key] = dict(row) if row else None
        return self._early[key]

    async def kept_withdrawals(self, limit: int) -> tuple[list[dict], int]:
        """The withdrawals still waiting for their approval's start, oldest first, and how
        many there are."""
        w = tables.withdrawals_before_start
        rows = (await self.session.execute(
            select(w, func.count().over().label("total")).order_by(w.c.received_at, w.c.system, w.c.external_id)
            .limit(limit))).mappings().all()
        return [{k: r[k] for k in w.c.keys()} for r in rows], (rows[0]["total"] if rows else 0)

    async def forget_withdrawal_before_start(self, ref: ExternalRef) -> None:
        w = tables.withdrawals_before_start
        await self.session.execute(delete(w).where(w.c.system == ref.system, w.c.external_id == ref.id))
        self._early[(ref.system, ref.id)] = None

    async def add(self, approval: Approval) -> None:
        """Written with the next statement or the commit (the unit of work's session
        gathers the inserts): a batch of starts costs three inserts, not three each."""
        self.session.insert_later(tables.approvals, {k: getattr(approval, k) for k in _APPROVAL_COLUMNS})
        self.session.insert_later(tables.approval_steps, [row_of(step) for step in approval.steps])
        self.session.insert_later(tables.approval_assignments, [row_of(p) for p in approval.assignments])
        approval._stored_places = {p.id for p in approval.assignments}

    async def _insert_places(self, places: list[Assignment]) -> None:
        if places:
            await self.session.execute(insert(tables.approval_assignments), [asdict(p) for p in places])

    async def get(self, approval_id: str, *, for_update: bool = False) -> Approval | None:
        query = select(tables.approvals).where(tables.approvals.c.id == approval_id)
        if for_update:
            query = query.with_for_update()
        row = (await self.session.execute(query)).mappings().first()
        if row is None:
            return None
        s, a = tables.approval_steps, tables.approval_assignments
        steps = await self.session.execute(select(s).where(s.c.approval_id == approval_id).order_by(s.c.stage_no))
        places = await self.session.execute(
            select(a).where(a.c.approval_id == approval_id).order_by(a.c.round, a.c.stage_no, a.c.decided_at))
        approval = Approval(**row, steps=[ApprovalStep(**r) for r in steps.mappings()],
                            assignments=[Assignment(**r) for r in places.mappings()])
        approval._stored_places = {p.id for p in approval.assignments}
        return approval

    async def in_flight_for_document(self, document_id: str) -> int:
        t = tables.approvals
        return await self.session.scalar(
            select(func.count()).select_from(t).where(t.c.document_id == document_id, t.c.status.in_(OPEN_STATUSES)))

    async def last_change_for_document(self, document_id: str) -> datetime | None:
        """When the document's approvals last changed (a closed one: when it ended)."""
        t = tables.approvals
        return await self.session.scalar(select(func.max(t.c.updated_at)).where(t.c.document_id == document_id))

    async def open_for_document(self, document_id: str) -> list[str]:
        t = tables.approvals
        rows = await self.session.execute(
            select(t.c.id).where(t.c.document_id == document_id, t.c.status.in_(OPEN_STATUSES))
            .order_by(t.c.created_at))
        return list(rows.scalars())

    async def lock_awaiting_counterparty(self, counterparty_ids: list[str]) -> list[str]:
        """The approvals of these counterparties that wait for them, with every open one
        of theirs locked on the way (in id order), not only the waiting ones: one that a
        transaction is putting into the wait right now is `in_progress` in this
        statement's snapshot; PostgreSQL waits for that transaction and reads the row
        again as it committed it."""
        t = tables.approvals
        rows = await self.session.execute(
            select(t.c.id, t.c.status).where(t.c.counterparty_id.in_(counterparty_ids),
                                             t.c.status.in_(OPEN_STATUSES))
            .order_by(t.c.id).with_for_update())
        return [id_ for id_, status in rows if status == AWAITING_COUNTERPARTY]

    async def with_deadline_work(self, now) -> list[str]:
        """Approvals whose current stage owes a reminder or an escalation now. Reads only
        the stages' deadline columns (no rows locked); the clock then loads these few."""
        t, s = tables.approvals, tables.approval_steps
        rows = await self.session.execute(
            select(t.c.id, s.c.due_at, s.c.remind_before_hours, s.c.reminded_at)
            .join(s, (s.c.approval_id == t.c.id) & (s.c.stage_no == t.c.current_stage_no))
            .where(t.c.status == IN_PROGRESS, s.c.status == "pending", s.c.due_at.is_not(None),
                   s.c.escalated_at.is_(None))
            .order_by(s.c.due_at))
        due = []
        for approval_id, due_at, remind_before, reminded_at in rows:
            remind_from = due_at - timedelta(hours=remind_before) if remind_before and not reminded_at else None
            if now > due_at or (remind_from is not None and now >= remind_from):
                due.append(approval_id)
        return due

    async def rename_counterparty_ref(self, from_ref: str, to_ref: str) -> int:
        t = tables.approvals
        result = await self.session.execute(
            update(t).where(t.c.counterparty_ref == from_ref).values(counterparty_ref=to_ref))
        return result.rowcount

    async def move_counterparty(self, from_id: str, to_id: str) -> None:
        t = tables.approvals
        await self.session.execute(update(t).where(t.c.counterparty_id == from_id).values(counterparty_id=to_id))

    async def in_flight_for_counterparty_ref(self, counterparty_ref: str) -> list[str]:
        t = tables.approvals
        rows = await self.session.execute(
            select(t.c.id).where(t.c.counterparty_ref == counterparty_ref, t.c.status.in_(OPEN_STATUSES))
            .order_by(t.c.created_at))
        return list(rows.scalars())

    async def save(self, approval: Approval) -> None:
        values = {k: getattr(approval, k) for k in _APPROVAL_COLUMNS if k != "id"}
        t = tables.approvals
        await self.session.execute(update(t).where(t.c.id == approval.id).values(**values))
        for step in approval.steps:
            step_values = asdict(step)
            await self.session.execute(
                update(tables.approval_steps).where(tables.approval_steps.c.id == step_values.pop("id"))
                .values(**step_values)
            )
        stored = getattr(approval, "_stored_places", set())
        a = tables.approval_assignments
        for place in approval.assignments:
            if place.id in stored:
                values = asdict(place)
                await self.session.execute(update(a).where(a.c.id == values.pop("id")).values(**values))
        await self._insert_places([p for p in approval.assignments if p.id not in stored])
        approval._stored_places = {p.id for p in approval.assignments}


def content_holders() -> list:
    """What names the content store's files: the versions of documents not disposed of,
    and the stored copies of the auditors' reports."""
    d, v, r = tables.documents, tables.document_versions, tables.report_snapshots
    return [
        select(v.c.sha256, literal("document"), v.c.document_id, v.c.version_no)
        .select_from(v.join(d, d.c.id == v.c.document_id)).where(d.c.disposed_at.is_(None)),
        select(r.c.sha256, literal("reconciliation report"), r.c.run_id, literal(None)),
    ]
