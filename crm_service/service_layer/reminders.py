"""Activity reminders: a CRM notification for every activity coming due, and delivery to
the owner's hook — a chat webhook (JSON POST {"text": ...}) or an e-mail (mailto:, when
an SMTP host is configured). Delivery failures are logged and counted, never retried
forever; the notification inside the CRM is always there."""

from __future__ import annotations

import asyncio
import smtplib
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage

import httpx
import structlog
from prometheus_client import Counter

from crm_service.service_layer.sales import due_reminders

log = structlog.get_logger()
HOOK_DELIVERIES = Counter("crm_reminder_hook_deliveries_total", "Reminder hook deliveries", ["kind", "outcome"])


def _send_mail(settings, to: str, text: str) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = settings.smtp_from, to, "CRM reminder"
    message.set_content(text)
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=10) as smtp:
        smtp.send_message(message)


async def deliver(settings, hook: str, text: str, client: httpx.AsyncClient) -> str:
    kind = "email" if hook.startswith("mailto:") else "webhook"
    try:
        if kind == "webhook":
            response = await client.post(hook, json={"text": text}, timeout=10)
            response.raise_for_status()
        elif settings.smtp_host:
            await asyncio.to_thread(_send_mail, settings, hook.removeprefix("mailto:"), text)
        else:
            HOOK_DELIVERIES.labels(kind, "not_configured").inc()
            log.warning("reminder_email_not_configured")
            return "not_configured"
    except Exception as exc:  # a broken hook must not stop the reminders of others
        HOOK_DELIVERIES.labels(kind, "failed").inc()
        log.warning("reminder_hook_failed", kind=kind, error=type(exc).__name__)
        return "failed"
    HOOK_DELIVERIES.labels(kind, "sent").inc()
    return "sent"


async def send_due_reminders(uow_factory, settings, *, now: datetime | None = None,
                             client: httpx.AsyncClient | None = None) -> list[dict]:
    now = now or datetime.now(timezone.utc)
    sent = await due_reminders(uow_factory(), now=now, ahead=timedelta(minutes=settings.remind_ahead_minutes))
    async with httpx.AsyncClient() if client is None else _borrowed(client) as http:
        for item in sent:
            item["delivery"] = await deliver(settings, item["hook"], item["text"], http) if item["hook"] else None
    return sent


class _borrowed:
    def __init__(self, client):
        self.client = client

    async def __aenter__(self):
        return self.client

    async def __aexit__(self, *exc):
        return False


async def run_reminders(uow_factory, settings) -> None:
    while True:
        try:
            sent = await send_due_reminders(uow_factory, settings)
            if sent:
                log.info("activity_reminders_sent", count=len(sent))
        except Exception as exc:  # the database may be away for a moment
            log.warning("activity_reminders_failed", error=str(exc))
        await asyncio.sleep(settings.reminder_check_seconds)
