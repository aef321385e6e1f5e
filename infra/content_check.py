"""Checks a service's content store against its database (`verify-content` on both
services' command line): every file a record needs is there and still hashes to its
name; files no record needs (orphans) are listed, and removed on request once they are
older than a grace period.

Orphans come from work that stopped half way: an upload's bytes go into the store before
its transaction (a process killed in between leaves them), a disposal deletes its bytes
after its commit (a process killed in between keeps them), and an upload that failed
leaves a partial `.upload-*` file only if the process died before cleaning it up. The
grace period protects uploads in flight: a file is written afresh (a new file, a new
modification time) every time its bytes are uploaded, so a file older than the grace
period is not part of any upload in progress."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import async_sessionmaker

from infra.content_store import ContentStore, sha256_of_file

PARTIAL_PREFIX = ".upload-"
DEFAULT_GRACE_HOURS = 24.0


@dataclass
class ContentReport:
    files: int = 0  # distinct files the records need
    missing: dict[str, list[str]] = field(default_factory=dict)  # sha256 -> the records that need it
    corrupt: dict[str, list[str]] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)  # file names (a sha256, or a partial upload's name)
    young_orphans: int = 0  # orphans within the grace period: left alone
    removed: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.missing and not self.corrupt

    def lines(self) -> list[str]:
        out = [f"content store: {self.files} files needed, {len(self.missing)} missing, {len(self.corrupt)} "
               f"corrupt, {len(self.orphans)} orphans past the grace period ({self.young_orphans} younger), "
               f"{len(self.removed)} removed"]
        for problem, found in (("MISSING", self.missing), ("CORRUPT", self.corrupt)):
            for sha, records in sorted(found.items()):
                out.append(f"{problem} {sha}: {', '.join(records)}")
        out += [f"orphan {name}" + (" (removed)" if name in self.removed else "") for name in self.orphans]
        return out


async def check_content(
    sessions: async_sessionmaker, store: ContentStore, holders: Sequence[Select], *, hashes: bool = True,
    remove_orphans: bool = False, grace_hours: float = DEFAULT_GRACE_HOURS,
) -> ContentReport:
    """`holders`: selects of (sha256, kind, id, version or None), one per table that names
    stored content; the first column is filtered to name the records of a problem."""
    needed: set[str] = set()
    async with sessions() as session:
        for query in holders:
            needed.update((await session.execute(query.with_only_columns(query.selected_columns[0]))).scalars())
    report = ContentReport(files=len(needed))
    for sha in sorted(needed):
        path = store.path_for(sha)
        if not path.exists():
            report.missing[sha] = []
        elif hashes and sha256_of_file(path) != sha:
            report.corrupt[sha] = []
    await _name_the_records(sessions, holders, report)

    cutoff = time.time() - grace_hours * 3600
    for path in _stored_files(store):
        if path.name in needed:
            continue
        if path.stat().st_mtime > cutoff:
            report.young_orphans += 1
            continue
        report.orphans.append(path.name)
        # Looked at again just before: bytes uploaded again since are a new, young file.
        if remove_orphans and path.stat().st_mtime <= cutoff:
            path.unlink(missing_ok=True)
            report.removed.append(path.name)
    return report


def _stored_files(store: ContentStore) -> Iterator[Path]:
    """Every file of the store, a subdirectory at a time (a store of millions of files is
    never listed whole), and the partial uploads at its root."""
    if not store.root.exists():
        return
    for entry in sorted(os.scandir(store.root), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            with os.scandir(entry.path) as files:
                yield from (Path(f.path) for f in files if f.is_file(follow_symlinks=False))
        elif entry.name.startswith(PARTIAL_PREFIX) and entry.is_file(follow_symlinks=False):
            yield Path(entry.path)


async def _name_the_records(sessions: async_sessionmaker, holders: Sequence[Select], report: ContentReport) -> None:
    problems = {**report.missing, **report.corrupt}
    if not problems:
        return
    shas = sorted(problems)
    async with sessions() as session:
        for query in holders:
            for start in range(0, len(shas), 1000):
                rows = await session.execute(query.where(query.selected_columns[0].in_(shas[start:start + 1000])))
                for sha, kind, item_id, version in rows:
                    record = f"{kind} {item_id}" + (f" version {version}" if version is not None else "")
                    (report.missing if sha in report.missing else report.corrupt)[sha].append(record)


def verify_content_command(holders: Sequence[Select], content_dir: str):
    """The `verify-content` entry of a service's command line (infra.service_cli's
    extra_commands): `content_dir` names the settings field of its store. Exit 1 when a
    file is missing or corrupt."""
    def arguments(parser) -> None:
        parser.add_argument("--skip-hashes", action="store_true",
                            help="only check that the files exist (hashing reads every byte)")
        parser.add_argument("--remove-orphans", action="store_true",
                            help="delete files no record needs, once older than the grace period")
        parser.add_argument("--grace-hours", type=float, default=DEFAULT_GRACE_HOURS,
                            help="orphans younger than this are left alone (uploads in flight)")

    async def run(settings, args) -> int:
        from infra.db import make_engine, make_session_factory

        engine = make_engine(settings.database_url)
        try:
            report = await check_content(
                make_session_factory(engine), ContentStore(getattr(settings, content_dir)), holders,
                hashes=not args.skip_hashes, remove_orphans=args.remove_orphans, grace_hours=args.grace_hours)
        finally:
            await engine.dispose()
        print("\n".join(report.lines()))
        return 0 if report.intact else 1

    return ("check the content store against the database: missing and corrupt files (exit 1), orphans",
            arguments, run)
