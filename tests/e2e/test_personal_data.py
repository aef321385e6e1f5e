"""Personal data never reaches the logs or the ECM: the journey runs with recognisable
phones, e-mails and person names on the organization, its contact, a lead and an
activity; afterwards every process's log and every row of every ECM table (and every
message on the broker's topics to the ECM) is searched for them. Real processes on
PostgreSQL."""

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from ecm_service.adapters import tables as ecm_tables
from schemas.topics import ECM_COMMANDS
from tests.e2e.conftest import running_system
from tests.e2e.journey import (
    SALES,
    approve_all,
    create_deal_with_document,
    ecm_approval,
    request_approval,
    wait_crm_status,
)
from tests.support.kafka import read_all


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    yield from running_system(tmp_path_factory, "postgresql")


def personal_data() -> dict[str, str]:
    tag = uuid.uuid4().hex[:6]
    return {"phone": f"+7 915 {tag[:3]}-77-{tag[3:5]}", "phone_digits": f"7915{tag[:3]}77{tag[3:5]}",
            "email": f"ivan.{tag}@personal.example", "person": f"Агафья Пантелеймоновна {tag}",
            "person_latin": f"Agafya{tag}", "lead_person": f"Евлампий Кузьмич {tag}"}


async def _ecm_rows(url: str) -> list[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = []
            for table in ecm_tables.metadata.sorted_tables:
                rows += [repr(tuple(r)) for r in (await conn.execute(select(table))).all()]
            return rows
    finally:
        await engine.dispose()


def test_personal_data_stays_in_the_crm(api, system):
    pd = personal_data()
    org = api.crm(SALES, "POST", "/api/organizations", json={
        "name": "ООО «Частные данные»", "phones": [pd["phone"]], "emails": [pd["email"]],
        "notes": f"звонить {pd['person']}, {pd['phone']}"}).json()
    contact = api.crm(SALES, "POST", "/api/contacts", json={
        "full_name": pd["person"], "organization_id": org["id"], "phones": [pd["phone"]], "emails": [pd["email"]],
        "notes": pd["person_latin"], "important_dates": [{"label": "birthday", "date": "1980-02-29"}]})
    assert contact.status_code == 201, contact.text
    lead = api.crm(SALES, "POST", "/api/leads", json={"title": "Lead", "person_name": pd["lead_person"],
                                                       "phones": [pd["phone"]], "emails": [pd["email"]]})
    assert lead.status_code == 201, lead.text
    activity = api.crm(SALES, "POST", "/api/activities", json={
        "kind": "call", "subject": f"call {pd['person']}", "organization_id": org["id"],
        "contact_id": contact.json()["id"], "due_at": (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()})
    assert activity.status_code == 201, activity.text

    flow = request_approval(api, create_deal_with_document(api, name="Частные данные", org=org))
    approve_all(api, ecm_approval(api, flow)["id"])
    wait_crm_status(api, flow, "approved")

    needles = list(pd.values())
    logs = {p.name: p.read_text(errors="replace") for p in (system.var / "logs").glob("*.log")}
    assert {"crm.log", "ecm.log", "bridge.log"} <= set(logs)
    found = [(name, n) for name, text in logs.items() for n in needles if n in text]
    assert found == [], f"personal data in logs: {found}"

    rows = asyncio.run(_ecm_rows(system.settings.ecm_database_url))
    assert any(flow["request"]["id"] in r for r in rows)  # the scan does see the ECM's data
    assert [(n, r[:200]) for r in rows for n in needles if n in r] == []

    sent = asyncio.run(read_all(system.bootstrap_servers, ECM_COMMANDS))
    assert sent and not [n for r in sent for n in needles if n.encode() in (r.value or b"")]
