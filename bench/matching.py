"""Match-or-propose quality and speed on a labelled set, on PostgreSQL.

    PYTHONPATH=. .venv/bin/python bench/matching.py --registry 1000000 --variants 20000 --sync 100000

The registry: generated verified counterparties, unique names of the shapes in
`company` (coined brand words, brand + trade word, generic dictionary-word names),
valid INN, KPP, OGRN. The CRM side, labelled with the record it
comes from (or none):
  exact      — the record's INN and KPP, name as typed by sales         -> expect link
  no_ids     — name only, as typed: legal form kept, dropped, moved, in
               full, or swapped for another; quotes of any kind; case    -> expect propose
  typo       — one slip in one word: a letter changed, dropped, doubled
               or two swapped; no ids                                    -> expect propose
  latin      — transliterated to Latin by one of several schemes (kh/h,
               y/i, ts/c, shch/sch, zh/j), Latin legal form; no ids       -> expect propose
  inn_typo   — name as typed, INN with one digit mistyped or two swapped -> expect propose
  branch     — the record's INN with another KPP                         -> expect propose
  absent     — a company that is not in the registry                     -> expect new (never link)
Reported: precision of `link`, recall of `link or propose` (the true record linked or
among the candidates), per-match latency, the initial sync of many organizations, and a
brute-force rapidfuzz scan over all names on a sample, for quality and time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rapidfuzz import fuzz, process  # noqa: E402
from stdnum.ru import inn as ru_inn  # noqa: E402
from stdnum.ru import ogrn as ru_ogrn  # noqa: E402

from bench.table import print_table, summarise  # noqa: E402
from ecm_service.adapters import tables  # noqa: E402
from ecm_service.domain.matching import core_name, match_name, name_keys, transliterate  # noqa: E402
from ecm_service.domain.names import normalize_name  # noqa: E402
from ecm_service.service_layer import bulk_matching  # noqa: E402
from ecm_service.service_layer import reconciliation as rec  # noqa: E402
from ecm_service.service_layer.registry import match_or_propose  # noqa: E402
from ecm_service.service_layer.unit_of_work import EcmUnitOfWork  # noqa: E402
from infra.db import make_engine, make_session_factory, upgrade_to_head  # noqa: E402
from tests.support.databases import MIGRATIONS, create_pg_database, drop_pg_database  # noqa: E402

ROOTS = """Альфа Бета Вектор Гамма Дельта Енисей Жемчуг Заря Исток Каскад Лазурь Меридиан Нева Орион Полюс
Радуга Сатурн Титан Урал Феникс Химик Цитадель Чайка Шторм Эталон Юпитер Янтарь Азимут Байкал Вега Гранит Двина
Ермак Зенит Импульс Кристалл Лидер Магистраль Норд Олимп Прогресс Ресурс Стандарт Технолог Универсал Фортуна Хорс
Циркон Север Восток Запад Юг Кедр Сосна Берёза Ока Волга Кама Дон Амур Лена Обь Ладога Онега Таймыр Алтай
Саяны""".split()
WORDS = ("Строй Торг Пром Снаб Сервис Инвест Трейд Логистик Технологии Системы Энерго Агро Транс Маш Мет Хим Фарм "
         "Медиа Софт Телеком Девелопмент Консалтинг Групп Холдинг Капитал Ресурс Монтаж Проект Инжиниринг Поставка "
         "Продукт Лес Нефть Газ Уголь Сталь Бетон Стекло Пласт Текстиль").split()
FORMS = ("ООО", "АО", "ПАО", "ЗАО")
FULL_FORMS = {"ООО": "Общество с ограниченной ответственностью", "АО": "Акционерное общество",
              "ПАО": "Публичное акционерное общество", "ЗАО": "Закрытое акционерное общество"}
EXTRA = ("Плюс", "Центр", "Регион", "Сибирь", "Москва", "Юг", "Север", "Восток", "Запад", "Поволжье", "Урал", "Дальний")
CONSONANTS, VOWELS, ENDINGS = "бвгдзклмнпрстфхчш", "аеиоуя", ("", "", "н", "р", "л", "м", "с", "к", "т", "в")


def made_up_word(rng: random.Random) -> str:
    """A coined brand word like most Russian company names have: 2-3 syllables."""
    syllables = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.choice((2, 2, 3))))
    return (syllables + rng.choice(ENDINGS)).capitalize()


def company(rng: random.Random, taken: set) -> str:
    """A core name (no legal form), unique in `taken`. Shapes and their shares: a coined
    word (30 %), coined word + trade word (20 %), the two written together (15 %), two
    coined words (5 %), coined + trade + region (10 %), a coined word with a number (5 %),
    and generic names of dictionary words only, "Альфа Строй Урал" (15 %): many of these
    share every word with hundreds of others."""
    while True:
        roll = rng.random()
        coined = made_up_word(rng)
        if roll < 0.30:
            core = coined
        elif roll < 0.50:
            core = f"{coined} {rng.choice(WORDS)}"
        elif roll < 0.65:
            core = coined + rng.choice(WORDS).lower()
        elif roll < 0.70:
            core = f"{coined} и {made_up_word(rng)}"
        elif roll < 0.80:
            core = f"{coined} {rng.choice(WORDS)} {rng.choice(EXTRA)}"
        elif roll < 0.85:
            core = f"{coined}-{rng.randint(1, 99)}"
        else:
            sep = rng.choice((" ", "-"))
            core = f"{rng.choice(ROOTS)}{sep}{rng.choice(WORDS)} {rng.choice(EXTRA + tuple(ROOTS))}"
        if core not in taken:
            taken.add(core)
            return core


def valid_inn(n: int) -> str:
    base = f"{77 + n % 20:02d}{n % 10**7:07d}"
    return base + ru_inn.calc_company_check_digit(base)


def valid_ogrn(n: int) -> str:
    base = f"1{n % 10**11:011d}"
    return base + ru_ogrn.calc_check_digit(base + "0")


def generate_registry(n: int, rng: random.Random) -> list[dict]:
    taken: set = set()
    now = datetime.now(timezone.utc)
    rows = []
    for i in range(n):
        core = company(rng, taken)
        name = f"{rng.choice(FORMS)} «{core}»"
        rows.append(dict(id=str(uuid.uuid4()), name=name, status="verified", inn=valid_inn(i * 7919 + 13),
                         kpp=f"77{i % 100:02d}01001", ogrn=valid_ogrn(i * 104729 + 7), legal_form=name.split()[0],
                         country="RU", quality_flags=[], addresses=[], normalized_name=normalize_name(name),
                         match_name=match_name(name),
                         created_at=now, updated_at=now, _core=core, _form=name.split()[0]))
    return rows


def typo(core: str, rng: random.Random) -> str:
    """One slip in one word of four letters or more: a letter changed, dropped, doubled
    or two neighbours swapped."""
    words = core.split(" ")
    long = [k for k, w in enumerate(words) if sum(c.isalpha() for c in w) >= 4] or [0]
    k = rng.choice(long)
    w = words[k]
    letters = [j for j in range(1, len(w) - 1) if w[j].isalpha()] or [0]
    i = rng.choice(letters)  # letters only: a different number is a different company
    slip = rng.choice(("change", "drop", "double", "swap"))
    if slip == "change":
        w = w[:i] + rng.choice("абвгдежзиклмнопрстуфхцчшщыэюя") + w[i + 1:]
    elif slip == "drop":
        w = w[:i] + w[i + 1:]
    elif slip == "double":
        w = w[:i] + w[i] + w[i:]
    elif i + 1 < len(w) and w[i + 1].isalpha() and w[i] != w[i + 1]:
        w = w[:i] + w[i + 1] + w[i] + w[i + 2:]
    else:
        w = w[:i] + ("а" if w[i] != "а" else "о") + w[i + 1:]
    words[k] = w
    return " ".join(words)


LATIN_VARIANTS = (("kh", "h"), ("y", "i"), ("ts", "c"), ("shch", "sch"), ("zh", "j"))


def latin(core: str, rng: random.Random) -> str:
    """Transliterated as a person would: one of several schemes, Latin legal form."""
    text = transliterate(core)
    for spelling, other in LATIN_VARIANTS:
        if rng.random() < 0.5:
            text = text.replace(spelling, other)
    return f"{text.title()} {rng.choice(('LLC', 'Ltd', 'JSC', ''))}".strip()


def one_digit_off(inn: str, rng: random.Random) -> str:
    """Two neighbouring digits swapped, or one digit mistyped."""
    for _ in range(20):
        i = rng.randrange(0, len(inn) - 1)
        if rng.random() < 0.5 and inn[i] != inn[i + 1]:
            return inn[:i] + inn[i + 1] + inn[i] + inn[i + 2:]
        digit = str((int(inn[i]) + rng.randint(1, 9)) % 10)
        return inn[:i] + digit + inn[i + 1:]
    return inn


def as_typed(source: dict, rng: random.Random) -> str:
    """The name as sales type it: legal form kept, dropped, moved, written in full or
    swapped for another; quotes of any kind or none; any case."""
    core, form = source["_core"], source["_form"]
    shape = rng.choice(("bare", "bare", "form_after", "quoted", "full_form", "other_form", "lower"))
    if shape == "form_after":
        return f"{core} {form}"
    if shape == "quoted":
        return f'{form} "{core}"'
    if shape == "full_form":
        return f"{FULL_FORMS[form]} «{core}»"
    if shape == "other_form":
        return f"{rng.choice([f for f in FORMS if f != form])} {core}"
    if shape == "lower":
        return core.lower()
    return core


KINDS = ("exact", "no_ids", "typo", "latin", "inn_typo", "branch", "absent")


def variants(registry: list[dict], m: int, rng: random.Random) -> list[dict]:
    out = []
    taken = {r["_core"] for r in registry}
    for i in range(m):
        kind = KINDS[i % len(KINDS)]
        source = rng.choice(registry)
        core = source["_core"]
        if kind == "exact":
            out.append(dict(kind=kind, target=source["id"], name=as_typed(source, rng), inn=source["inn"],
                            kpp=source["kpp"]))
        elif kind == "no_ids":
            out.append(dict(kind=kind, target=source["id"], name=as_typed(source, rng)))
        elif kind == "typo":
            out.append(dict(kind=kind, target=source["id"], name=typo(core, rng)))
        elif kind == "latin":
            out.append(dict(kind=kind, target=source["id"], name=latin(core, rng)))
        elif kind == "inn_typo":
            out.append(dict(kind=kind, target=source["id"], name=as_typed(source, rng),
                            inn=one_digit_off(source["inn"], rng)))
        elif kind == "branch":
            out.append(dict(kind=kind, target=source["id"], name=f"{core} (филиал)", inn=source["inn"],
                            kpp="631601001"))
        else:
            out.append(dict(kind=kind, target=None, name=company(rng, taken)))
    return out


async def load(engine, registry: list[dict]) -> int:
    """COPY the registry and its name keys in (what the ECM writes per record, in bulk)."""
    import json

    columns = [c.name for c in tables.counterparties.columns if c.name in registry[0]]
    keys = 0
    async with engine.connect() as conn:
        pg = (await conn.get_raw_connection()).driver_connection
        for start in range(0, len(registry), 50_000):
            chunk = registry[start:start + 50_000]
            await pg.copy_records_to_table("counterparties", columns=columns, records=[
                tuple(json.dumps(r[c]) if c in ("quality_flags", "addresses") else r[c] for c in columns)
                for r in chunk])
            key_rows = [(key, r["id"]) for r in chunk for key in name_keys(r["name"])]
            keys += len(key_rows)
            await pg.copy_records_to_table("counterparty_name_keys", columns=["key", "counterparty_id"],
                                           records=key_rows)
        # As autovacuum leaves a table in service: statistics and the visibility map (which
        # lets key lookups read the index alone).
        await pg.execute("VACUUM ANALYZE counterparties")
        await pg.execute("VACUUM ANALYZE counterparty_name_keys")
    return keys


async def evaluate(sessions, cases: list[dict]) -> tuple[dict, list[float], dict]:
    stats = {"links": 0, "right_links": 0, "expected": 0, "found": 0, "should_link": 0, "linked_right": 0,
             "answered": 0, "answered_right": 0}
    per_kind: dict = {}
    latencies = []
    from ecm_service.domain.identifiers import compact

    for case in cases:
        uow = EcmUnitOfWork(sessions)
        started = time.perf_counter()
        async with uow:
            decision = await match_or_propose(uow, name=case["name"], inn=compact(case.get("inn")),
                                              kpp=compact(case.get("kpp")), ogrn=None)
        latencies.append((time.perf_counter() - started) * 1000)
        kind = per_kind.setdefault(case["kind"], {"n": 0, "link": 0, "propose": 0, "new": 0, "hit": 0})
        kind["n"] += 1
        kind[decision.outcome] += 1
        if decision.outcome == "link":
            stats["links"] += 1
            stats["right_links"] += decision.linked_id == case["target"]
        hit = bool(case["target"]) and (decision.linked_id == case["target"] or any(
            c["counterparty_id"] == case["target"] for c in decision.candidates))
        if case["kind"] == "exact":  # the identifiers agree: a link is expected
            stats["should_link"] += 1
            stats["linked_right"] += decision.linked_id == case["target"]
        if decision.outcome in ("link", "propose"):
            stats["answered"] += 1
            stats["answered_right"] += hit
        if case["target"]:
            stats["expected"] += 1
            stats["found"] += hit
            kind["hit"] += hit
            case["hit"] = hit
    return stats, latencies, per_kind


def brute_force(registry: list[dict], cases: list[dict], size: int) -> tuple[float, float, float, int]:
    """The whole registry scanned with rapidfuzz for each of `size` labelled cases:
    (ms per query, its recall in the top 5, the index's recall on the same cases, n)."""
    names = [core_name(r["name"]) for r in registry]
    ids = [r["id"] for r in registry]
    sample = [c for c in cases if c["target"]][:size]
    started = time.perf_counter()
    hits = 0
    for case in sample:
        found = process.extract(core_name(case["name"]), names, scorer=fuzz.token_set_ratio, limit=5, score_cutoff=70)
        hits += any(ids[index] == case["target"] for _, _, index in found)
    per_query = (time.perf_counter() - started) * 1000 / max(1, len(sample))
    n = max(1, len(sample))
    return per_query, hits / n, sum(c["hit"] for c in sample) / n, len(sample)


async def initial_sync(sessions, registry: list[dict], n: int, rng: random.Random) -> tuple[float, dict]:
    """A dry run over n CRM organizations shaped like the labelled variants, 500 a batch
    as `bridgectl reconcile` sends them."""
    uow = EcmUnitOfWork(sessions)
    run = await rec.start_run(uow, system="bench", mode="dry_run", user_id="bench")
    orgs = [{"id": f"{i:08d}", "name": v["name"], "inn": v.get("inn"), "kpp": v.get("kpp"), "ogrn": None,
             "updated_at": None} for i, v in enumerate(variants(registry, n, rng))]
    started = time.perf_counter()
    for start in range(0, n, 500):
        await rec.reconcile_batch(EcmUnitOfWork(sessions), run["id"], orgs[start:start + 500])
    done = await rec.finish_run(EcmUnitOfWork(sessions), run["id"], "bench")
    return time.perf_counter() - started, done["counts"]


def cpu_reference() -> float:
    """Milliseconds for a fixed piece of pure-Python and rapidfuzz work: the shared
    machines here vary by up to 2x in speed from hour to hour, and a figure is only
    comparable with another next to its reference."""
    rng = random.Random(1)
    words = ["".join(rng.choice("абвгдежзиклмнопрстуфхцчшщэюя") for _ in range(rng.randint(4, 12)))
             for _ in range(2000)]
    started = time.perf_counter()
    for i in range(60_000):
        a, b = words[i % 2000], words[(i * 7) % 2000]
        fuzz.token_set_ratio(f"{a} {b}", f"{b} {a}x")
        normalize_name(f"ООО «{a}» {b}")
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", type=int, default=200_000)
    parser.add_argument("--variants", type=int, default=7_000)
    parser.add_argument("--sync", type=int, default=10_000, help="organizations in the initial sync")
    parser.add_argument("--brute", type=int, default=100, help="labelled cases also scanned by brute force")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2,
                        help="matching processes of the initial sync, as ECM_MATCH_WORKERS (0: in process)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    reference_before = cpu_reference()
    started = time.perf_counter()
    registry = generate_registry(args.registry, rng)
    cases = variants(registry, args.variants, rng)
    generated = time.perf_counter() - started
    name, url = create_pg_database("bench_matching")
    try:
        upgrade_to_head(MIGRATIONS["ecm"], url)
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        bulk_matching.configure(bulk_matching.MatchWorkers(url, args.workers) if args.workers else None)

        async def run():
            t0 = time.perf_counter()
            keys = await load(engine, registry)
            loaded = time.perf_counter() - t0
            stats, latencies, per_kind = await evaluate(sessions, cases)
            sync_s, sync_counts = await initial_sync(sessions, registry, args.sync, rng)
            await engine.dispose()
            return loaded, keys, stats, latencies, per_kind, sync_s, sync_counts

        loaded, keys, stats, latencies, per_kind, sync_s, sync_counts = asyncio.run(run())
    finally:
        bulk_matching.configure(None)
        drop_pg_database(name)
    brute_ms, brute_recall, index_recall, sampled = brute_force(registry, cases, args.brute)
    reference_after = cpu_reference()
    q = statistics.quantiles(latencies, n=100)
    precision = stats["right_links"] / stats["links"] if stats["links"] else 1.0
    recall = stats["found"] / stats["expected"] if stats["expected"] else 0.0
    rows = [
        ("cores", os.cpu_count(), ""),
        ("machine speed reference", f"{reference_before:.0f} ms",
         f"a fixed CPU workload, before the run; {reference_after:.0f} ms after it (lower is faster)"),
        ("registry (verified counterparties)", f"{args.registry:,}",
         f"generated in {generated:.0f} s, loaded with {keys:,} name keys in {loaded:.0f} s"),
        ("labelled CRM variants", f"{len(cases):,}", f"{len(KINDS)} kinds, equal shares"),
        ("link precision", f"{precision:.4f}", f"{stats['right_links']}/{stats['links']} (target >= 0.995)"),
        ("recall of link", f"{stats['linked_right'] / max(1, stats['should_link']):.4f}",
         f"{stats['linked_right']}/{stats['should_link']} (variants with the record's INN and KPP)"),
        ("recall of link or propose", f"{recall:.4f}", f"{stats['found']}/{stats['expected']} (target >= 0.97)"),
        ("precision of link or propose", f"{stats['answered_right'] / max(1, stats['answered']):.4f}",
         f"{stats['answered_right']}/{stats['answered']} (the true record among the answer; absent companies "
         "that look like a registered one count against)"),
        ("match latency p50", f"{q[49]:.1f} ms", f"p95 {q[94]:.1f} ms, p99 {q[98]:.1f} ms "
                                                f"(target p50 <= 5 ms at 1,000,000)"),
        (f"initial sync (dry run) of {args.sync:,}", f"{sync_s:.1f} s",
         f"{args.sync / sync_s:,.0f} org/s, {args.workers} matching processes "
         "(target 100,000 vs 1,000,000 in <= 120 s); "
         + ", ".join(f"{k} {v}" for k, v in sorted(sync_counts.items()))),
        (f"brute-force rapidfuzz scan, {sampled} cases", f"{brute_ms:.0f} ms",
         f"per query, {brute_ms / q[49]:,.0f}x the index's p50; true record in its top 5: {brute_recall:.3f}, "
         f"the index on the same cases: {index_recall:.3f}"),
    ]
    for kind, k in per_kind.items():
        rows.append((f"  {kind}", k["n"], f"link {k['link']}, propose {k['propose']}, new {k['new']}, "
                                          f"true record found {k['hit']}"))
    print_table(rows)
    at = f"{args.registry:,} registry"
    summarise([
        (f"matching: link precision ({at})", f"{precision:.4f}", ">= 0.995", precision >= 0.995),
        (f"matching: recall of link or propose ({at})", f"{recall:.4f}", ">= 0.97", recall >= 0.97),
        (f"matching: one match p50 ({at})", f"{q[49]:.1f} ms", "<= 5 ms at 1,000,000", q[49] <= 5),
        (f"matching: initial sync of {args.sync:,} ({at})", f"{sync_s:.1f} s", "100,000 vs 1,000,000 in <= 120 s",
         sync_s <= 120 if (args.sync, args.registry) == (100_000, 1_000_000) else None),
        ("machine speed reference (lower is faster)", f"{reference_before:.0f} ms", "", None),
    ])


if __name__ == "__main__":
    main()
