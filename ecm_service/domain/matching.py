"""Match-or-propose: for an organization arriving by soft sync the registry answers
`link` (identifiers agree with a verified counterparty), `propose` (it looks like one or
more existing counterparties: the candidates and the evidence go to the steward) or `new`.
Never a silent duplicate of a verified counterparty; never a refusal.

Candidates come from indexed blocking keys — INN, OGRN, and the match key (the longest
word of the name without its legal form, transliterated to Latin, so that "Romashka LLC"
meets ООО «Ромашка») — never from a scan of the registry."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rapidfuzz import fuzz

from ecm_service.domain.names import split_legal_form

# Thresholds (configuration in spirit; documented in the README).
NAME_PROPOSE = 85.0  # a similar name alone is worth the steward's look
NAME_WITH_ID = 70.0  # with an agreeing identifier, a looser name still counts

_CYRILLIC = dict(zip(
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
    ["a", "b", "v", "g", "d", "e", "e", "zh", "z", "i", "y", "k", "l", "m", "n", "o", "p", "r", "s", "t", "u", "f",
     "kh", "ts", "ch", "sh", "shch", "", "y", "", "e", "yu", "ya"], strict=True))
# Latin spellings that the same Russian sound gets in the wild, folded to one.
_LATIN_FOLDS = [("shch", "sh"), ("sch", "sh"), ("kh", "h"), ("ks", "x"), ("ts", "c"), ("tz", "c"), ("ja", "ya"),
                ("ju", "yu"), ("yo", "e"), ("iy", "y"), ("ij", "y"), ("w", "v"), ("ph", "f"), ("j", "y")]


def transliterate(text: str) -> str:
    out = "".join(_CYRILLIC.get(c, c) for c in text.lower())
    for spelling, folded in _LATIN_FOLDS:
        out = out.replace(spelling, folded)
    return out


def core_name(name: str) -> str:
    """The name without legal form, quotes, case and script: 'romashka' for ООО «Ромашка»
    and for Romashka LLC."""
    _, core = split_legal_form(name or "")
    return re.sub(r"\s+", " ", transliterate(core)).strip()


def match_key(name: str) -> str | None:
    words = sorted((w for w in core_name(name).split() if not w.isdigit()), key=lambda w: (-len(w), w))
    return words[0][:100] if words else None


def name_score(a: str, b: str) -> float:
    """0..100; names whose numbers differ are different companies."""
    a, b = core_name(a), core_name(b)
    if not a or not b or re.findall(r"\d+", a) != re.findall(r"\d+", b):
        return 0.0
    return fuzz.token_set_ratio(a, b)


def one_digit_apart(a: str | None, b: str | None) -> bool:
    """Same length, one position differs, or two neighbours swapped: a typing slip."""
    if not a or not b or len(a) != len(b) or a == b:
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                              and a[diff[1]] == b[diff[0]])


@dataclass(frozen=True)
class Incoming:
    name: str
    inn: str | None = None
    kpp: str | None = None
    ogrn: str | None = None
    inn_valid: bool = False


@dataclass(frozen=True)
class Known:
    id: str
    name: str
    status: str
    inn: str | None = None
    kpp: str | None = None
    ogrn: str | None = None
    addresses: tuple[str, ...] = ()


@dataclass
class Decision:
    outcome: str  # link | propose | new
    rule: str
    linked_id: str | None = None
    candidates: list[dict] = field(default_factory=list)


def _evidence(incoming: Incoming, known: Known) -> dict:
    score = name_score(incoming.name, known.name)
    agree, differ, rules = [], [], []
    for key in ("inn", "kpp", "ogrn"):
        mine, theirs = getattr(incoming, key), getattr(known, key)
        if mine and theirs:
            (agree if mine == theirs else differ).append(key)
    if "inn" in agree and "kpp" in differ:
        rules.append("same_inn_other_kpp")  # a branch, or a new KPP after a move
    elif "inn" in agree:
        rules.append("same_inn")
    if "ogrn" in agree:
        rules.append("same_ogrn")
    if known.status == "verified" and one_digit_apart(incoming.inn, known.inn):
        rules.append("inn_one_digit_from_verified")
    if score >= NAME_PROPOSE:
        rules.append("similar_name")
    elif score >= NAME_WITH_ID and (agree or "inn_one_digit_from_verified" in rules):
        rules.append("similar_name_with_id")
    return {"counterparty_id": known.id, "name": known.name, "status": known.status, "score": round(score, 1),
            "agree": agree, "differ": differ, "rules": rules}


def decide(incoming: Incoming, candidates: list[Known], *, not_duplicates: set[str] = frozenset()) -> Decision:
    """Link only on identifiers: INN+KPP, or OGRN, or INN alone when that INN has exactly
    one verified record; all with a valid INN. Anything else that looks alike is proposed
    with its evidence, best first."""
    verified = [c for c in candidates if c.status == "verified"]
    if incoming.inn_valid and incoming.inn:
        same_inn = [c for c in verified if c.inn == incoming.inn]
        if incoming.kpp:
            exact = [c for c in same_inn if c.kpp == incoming.kpp]
            if len(exact) == 1:
                return Decision("link", "inn_kpp", exact[0].id, [_evidence(incoming, exact[0])])
        if incoming.ogrn:
            by_ogrn = [c for c in same_inn if c.ogrn == incoming.ogrn]
            if len(by_ogrn) == 1:
                return Decision("link", "ogrn", by_ogrn[0].id, [_evidence(incoming, by_ogrn[0])])
        if not incoming.kpp and len(same_inn) == 1:
            return Decision("link", "inn_single_verified", same_inn[0].id, [_evidence(incoming, same_inn[0])])
    if incoming.ogrn and not incoming.inn:
        by_ogrn = [c for c in verified if c.ogrn == incoming.ogrn]
        if len(by_ogrn) == 1:
            return Decision("link", "ogrn", by_ogrn[0].id, [_evidence(incoming, by_ogrn[0])])
    evidence = [e for e in (_evidence(incoming, c) for c in candidates if c.id not in not_duplicates) if e["rules"]]
    rank = {"same_inn_other_kpp": 4, "same_inn": 4, "same_ogrn": 4, "inn_one_digit_from_verified": 3,
            "similar_name": 2, "similar_name_with_id": 2}
    evidence.sort(key=lambda e: (-max(rank[r] for r in e["rules"]), e["status"] != "verified", -e["score"]))
    if evidence:
        return Decision("propose", evidence[0]["rules"][0], None, evidence[:5])
    return Decision("new", "no_similar_record")
