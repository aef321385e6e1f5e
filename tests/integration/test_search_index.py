"""On PostgreSQL the registry's look-ups by a word of the name (the registry search and
the steward's look-alikes) are served by the trigram index of migration 0015, both in the
plan the server makes for the values at hand and in the generic plan it may keep for a
prepared statement after a few runs; SQLite, which has no such index, gives the same
answers by reading the table. The API searches as the registry page does."""

from sqlalchemy import event

from ecm_service.service_layer import steward
from tests.integration.test_matching import SBER, STEWARD, sync

INDEX = "ix_counterparties_normalized_name_trgm"
NAMES = ["ООО «Вектор»", "ООО «Вектор Плюс»", "АО «Векторные системы»", "ООО «Ромашка»", "ПАО «Сбербанк России»",
         "ООО «Строй-Вектор»", "ЗАО «Рога и копыта»"]


async def _statements(ecm, read) -> tuple[object, list[tuple[str, tuple]]]:
    """What `read(uow)` answers, and the SELECTs on counterparties it sent."""
    sent: list[tuple[str, tuple]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "FROM counterparties" in statement:
            sent.append((statement, tuple(parameters or ())))

    event.listen(ecm.engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with ecm.uow() as uow:
            answer = await read(uow)
    finally:
        event.remove(ecm.engine.sync_engine, "before_cursor_execute", capture)
    return answer, sent


def _literal(value) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "NULL"}[value]
    if isinstance(value, int | float):
        return str(value)
    raise TypeError(f"no literal for {value!r}")


async def _plans(ecm, statement: str, parameters: tuple) -> dict[str, str]:
    """The plan of `statement` as the server would make it for these values (custom) and
    for any values (generic), with sequential scans priced out: the tables here are small,
    and the question is whether the index can serve the query at all."""
    plans = {}
    async with ecm.engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        await raw.execute("SET enable_seqscan = off")
        await raw.execute(f"PREPARE probe AS {statement}")
        try:
            for mode in ("force_custom_plan", "force_generic_plan"):
                await raw.execute(f"SET plan_cache_mode = {mode}")
                arguments = ", ".join(_literal(p) for p in parameters)
                rows = await raw.fetch(f"EXPLAIN EXECUTE probe({arguments})" if parameters else "EXPLAIN EXECUTE probe")
                plans[mode] = "\n".join(r[0] for r in rows)
        finally:
            await raw.execute("DEALLOCATE probe")
            await raw.execute("RESET ALL")
    return plans


async def test_a_word_of_the_name_is_found_on_both_backends_through_the_trigram_index_on_postgresql(ecm, backend):
    ids = {}
    for name in NAMES:
        ids[name], _ = await sync(ecm, name, **(SBER if "Сбербанк" in name else {}))
    await steward.verify(ecm.uow(), counterparty_id=ids["ПАО «Сбербанк России»"], user=STEWARD, reason="EGRUL",
                         correlation_id="c")

    async def search(uow):
        return sorted(c.name for c in await uow.counterparties.search(text="вектор", status=None, limit=50))

    found, sent = await _statements(ecm, search)
    assert found == ["АО «Векторные системы»", "ООО «Вектор Плюс»", "ООО «Вектор»", "ООО «Строй-Вектор»"]
    two_words, _ = await _statements(ecm, lambda uow: uow.counterparties.search(text="рога копыт", status=None,
                                                                                 limit=50))
    assert [c.name for c in two_words] == ["ЗАО «Рога и копыта»"]

    first = ids["ООО «Вектор»"]  # came first: match-or-propose had nothing to offer, the look is made now

    async def look_alikes(uow):
        record = await uow.counterparties.get(first)
        return sorted(c["record"].name for c in await steward.candidates_for(uow, record))

    alike, sent_alike = await _statements(ecm, look_alikes)
    assert alike == ["АО «Векторные системы»", "ООО «Вектор Плюс»", "ООО «Строй-Вектор»"]

    if backend != "postgresql":
        return
    by_name = [s for s in sent + sent_alike if "normalized_name LIKE" in s[0]]
    assert len(by_name) == 2, [s[0] for s in sent + sent_alike]  # the search's, and the look-alikes'
    for statement, parameters in by_name:
        for mode, plan in (await _plans(ecm, statement, parameters)).items():
            assert INDEX in plan, f"{mode}:\n{plan}"


async def test_the_api_searches_the_registry_as_the_page_does(ecm_app):
    client, tokens, container = ecm_app
    legal = {"Authorization": f"Bearer {tokens['legal']}"}
    for name in NAMES:
        await sync(container, name, **(SBER if "Сбербанк" in name else {}))

    def names(answer) -> list[str]:
        assert answer.status_code == 200, answer.text
        return sorted(c["name"] for c in answer.json())

    assert names(await client.get("/api/counterparties", params={"q": "вектор"}, headers=legal)) == [
        "АО «Векторные системы»", "ООО «Вектор Плюс»", "ООО «Вектор»", "ООО «Строй-Вектор»"]
    assert names(await client.get("/api/counterparties", params={"q": "копыт рога"}, headers=legal)) == [
        "ЗАО «Рога и копыта»"]
    assert names(await client.get("/api/counterparties", params={"q": SBER["inn"]}, headers=legal)) == [
        "ПАО «Сбербанк России»"]
    assert names(await client.get("/api/counterparties", params={"q": "вектор", "status": "verified"},
                                  headers=legal)) == []
    blank = await client.get("/api/counterparties", params={"q": "  "}, headers=legal)  # lists, as without q
    assert len(names(blank)) == len(NAMES)
    too_long = await client.get("/api/counterparties", params={"q": "x" * 201}, headers=legal)
    assert too_long.status_code == 422

