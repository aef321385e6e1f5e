"""Which calendar day it is for the company: a deputy's date range, "my day" in the CRM,
the date a generated document carries. Instants are stored and compared in UTC; only
the boundaries of a day follow the company's time zone (BUSINESS_TIMEZONE, an IANA name
such as Europe/Moscow), so a deputy named from the 7th stands in from the company's
midnight, not from UTC's (03:00 in Moscow), whatever the server's own zone."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_zone = ZoneInfo("UTC")


def zone_named(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as Europe/Moscow or UTC") from exc


def use_zone(name: str) -> None:
    """Set once when a process builds its app (infra.service_app), from its settings."""
    global _zone
    _zone = zone_named(name)


def today(now: datetime | None = None) -> date:
    return (now or datetime.now(timezone.utc)).astimezone(_zone).date()


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC instants at which the company's `day` starts and the next one starts (23 or
    25 hours apart across a daylight-saving change)."""
    start = datetime.combine(day, time.min, tzinfo=_zone)
    end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=_zone)
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)


def local_text(at: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """An instant as the company's wall-clock time (a page filter: `{{ a.due_at | local }}`)."""
    if at is None:
        return ""
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).astimezone(_zone).strftime(fmt)


def from_wall_clock(text: str) -> datetime:
    """A time typed into a page (a `datetime-local` field: no zone) as a UTC instant: the
    company's wall clock, as the person typing it reads it. Raises ValueError."""
    at = datetime.fromisoformat(text)
    return (at if at.tzinfo else at.replace(tzinfo=_zone)).astimezone(timezone.utc)
