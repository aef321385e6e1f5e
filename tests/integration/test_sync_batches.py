"""A batch of soft syncs is matched at once (registry.prefetch_matches): every
organization gets the same answer, with the same evidence, as when the commands are
applied one by one, also when an earlier command of the batch created or changed a
record it shares a name, an INN or an OGRN with."""

import uuid

import pytest

from ecm_service.bootstrap import bootstrap as ecm_bootstrap
from ecm_service.config import EcmSettings
from ecm_service.service_layer import steward
from ecm_service.service_layer.commands import apply_command, apply_commands
from infra.users import User
from schemas import ecm_commands
from schemas.common import ExternalRef
from schemas.envelope import new_envelope
from schemas.registry import encode, parse_message

SBER = {"inn": "7707083893", "kpp": "773601001", "ogrn": "1027700132195"}
STEWARD = User(id="steward-id", name="steward", role="steward")


@pytest.fixture
async def other_ecm(backend, databases, broker, tmp_path):
    """A second ECM on a database of its own (the same commands, applied another way)."""
    container = ecm_bootstrap(EcmSettings(
        database_url=databases.url("ecm", backend), kafka_bootstrap_servers=broker,
        content_dir=tmp_path / "other-content", imports_dir=tmp_path / "other-imports"))
    await container.producer.start()
    yield container
    await container.producer.stop()
    await container.engine.dispose()


def _sync(ref: ExternalRef, name: str, **ids):
    envelope = new_envelope(type=ecm_commands.SYNC_COUNTERPARTY, schema_version=1, source="it", correlation_id="c",
                            payload=ecm_commands.SyncCounterpartyV1(external_ref=ref, name=name, **ids))
    return parse_message(encode(envelope))


def _ref() -> ExternalRef:
    return ExternalRef(system="crm", id=str(uuid.uuid4()))


async def _seed(ecm, sber_ref: ExternalRef, romashka_ref: ExternalRef) -> None:
    await apply_command(ecm.uow(), _sync(romashka_ref, "ООО «Ромашка»"), "it", ecm.routes)  # stays pending
    await apply_command(ecm.uow(), _sync(sber_ref, "ПАО «Сбербанк России»", **SBER), "it", ecm.routes)
    async with ecm.uow() as uow:
        sber_id = await uow.external_refs.find("counterparty", sber_ref)
    await steward.verify(ecm.uow(), counterparty_id=sber_id, user=STEWARD, reason="EGRUL", correlation_id="c")


async def _decisions(ecm, refs: list[ExternalRef]) -> list[tuple]:
    """Each reference's decision, with the candidates named by the reference that
    created them (record ids differ between the two databases)."""
    async with ecm.uow() as uow:
        ids = {ref.as_text(): await uow.external_refs.find("counterparty", ref) for ref in refs}
        rows = await uow.counterparties.match_decisions_of(list(set(ids.values())))
    created_by = {r["counterparty_id"]: r["source_ref"] for r in rows if r["outcome"] != "link"}
    seen = []
    for r in sorted(rows, key=lambda r: r["source_ref"]):
        candidates = sorted((created_by.get(c["counterparty_id"], c["counterparty_id"]), c["score"],
                             tuple(c["rules"]), tuple(c["agree"]), tuple(c["differ"])) for c in r["candidates"])
        seen.append((r["source_ref"], r["outcome"], r["rule"], created_by.get(r["counterparty_id"]), candidates))
    return seen


async def test_a_batch_of_syncs_gets_the_answers_of_one_by_one(ecm, other_ecm):
    sber, vector, vector_plus, sber_short, nezabudka, nezabudka_short, vector_m, grain, romashka, romashka_ao = \
        refs = [_ref() for _ in range(10)]
    commands = [
        _sync(romashka, "ООО «Тюльпан»"),  # a record from before the batch renamed
        _sync(romashka_ao, "АО «Ромашка»"),  # its old name: no longer a candidate
        _sync(vector, "ООО «Вектор»", inn="7736050003"),
        _sync(vector_plus, "ООО «Вектор Плюс»", inn="7736050003"),  # the INN of a record made just before
        _sync(sber_short, "Сбер", inn=SBER["inn"], kpp=SBER["kpp"]),  # links to the verified bank
        _sync(nezabudka, "ООО «Незабудка»"),
        _sync(vector, "ООО «Гранит-М»"),  # the first record renamed (pending: the sync changes it)
        _sync(nezabudka_short, "Незабудка"),  # a name like the one two commands before
        _sync(vector_m, "АО «Вектор»"),  # the old name of the renamed record
        _sync(grain, "ООО «Гранит»"),  # like its new name
    ]
    for ecm_ in (ecm, other_ecm):
        await _seed(ecm_, sber, romashka)
    for message in commands:
        await apply_command(ecm.uow(), message, "it", ecm.routes)
    await apply_commands(other_ecm.uow(), commands, "it", other_ecm.routes)

    one_by_one, batched = await _decisions(ecm, refs), await _decisions(other_ecm, refs)
    assert batched == one_by_one
    outcomes = {r[0]: (r[1], r[4]) for r in one_by_one}
    assert outcomes[sber_short.as_text()][0] == "link"
    # the cases the test is about did see the records of the same batch
    assert vector.as_text() in [c[0] for c in outcomes[vector_plus.as_text()][1]]
    assert nezabudka.as_text() in [c[0] for c in outcomes[nezabudka_short.as_text()][1]]
    assert vector.as_text() in [c[0] for c in outcomes[grain.as_text()][1]]
    assert outcomes[romashka_ao.as_text()] == ("new", [])
