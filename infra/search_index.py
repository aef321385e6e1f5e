"""Searching names by any part of them (`LIKE '%word%'`) without reading the whole table.

A B-tree index cannot serve a pattern that starts with a wildcard, so every registry
search and every steward's look for a record's look-alikes read all the records: at
200,000 records about 50 ms and three processes of a 2-core machine per query, and the
steward's queue runs one such query per record it shows. PostgreSQL's pg_trgm extension
(shipped with PostgreSQL as a contrib module, a trusted extension since PostgreSQL 13:
the owner of the database may create it) indexes a column's three-letter pieces in a GIN
index, which serves `LIKE` and `ILIKE` with the wildcard on either side; a word of three
letters or more is then found by the index (docs/adr/0023).

SQLite has no such index: the embedded default keeps reading the table, which at the
sizes it is for (one machine, a trial) is quick anyway. The indexes are declared for
PostgreSQL only, and the schema comparisons (Alembic's autogenerate, the migrations
test) leave them out on other databases: `include_object`.
"""

from __future__ import annotations

from sqlalchemy import Index


def trigram_index(name: str, column: str) -> Index:
    """A GIN index of `column`'s trigrams, created on PostgreSQL only (the migration that
    adds it creates the extension first)."""
    return Index(name, column, postgresql_using="gin",
                 postgresql_ops={column: "gin_trgm_ops"}).ddl_if(dialect="postgresql")


def include_object(dialect_name: str):
    """An Alembic `include_object` hook for a database of `dialect_name`: it leaves out
    what the tables declare for another database only (`Index.ddl_if(dialect=…)`), which
    Alembic's comparison does not heed by itself."""

    def include(obj, name, type_, reflected, compare_to) -> bool:
        condition = getattr(obj, "_ddl_if", None)
        wanted = getattr(condition, "dialect", None)
        return wanted is None or wanted == dialect_name

    return include
