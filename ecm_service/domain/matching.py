"""Match-or-propose: for an organization arriving by soft sync the registry answers
`link` (identifiers agree with a verified counterparty), `propose` (it looks like one or
more existing counterparties: the candidates and the evidence go to the steward) or `new`.
Never a silent duplicate of a verified counterparty; never a refusal.

Candidates come from indexed blocking keys, never from a scan of the registry: INN, OGRN,
and the name keys of `name_keys` — every word of the name without its legal form,
transliterated to Latin (so that "Romashka LLC" meets ООО «Ромашка»), every two
neighbouring words written together ("Альфа-Строй" meets "Альфастрой"), the whole name,
and both halves of every longer word (one typing slip leaves one half intact). A key
shared by too many records (a generic word such as "строй") says nothing and is not
used; candidates are ranked by their rarer shared keys and only the best few are scored."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

from rapidfuzz import fuzz
from rapidfuzz.distance import OSA

from ecm_service.domain.names import split_legal_form


@dataclass(frozen=True)
class Thresholds:
    """Configuration (ECM_MATCH_* settings, README "Matching")."""
    name_propose: float = 85.0  # a similar name alone is worth the steward's look (0..100)
    name_with_id: float = 70.0  # with an agreeing identifier, a looser name still counts
    slip_min_length: int = 4  # names one typing slip apart are proposed from this length on
    prefetch: int = 100  # candidates found by name (rarest shared keys first) loaded per organization
    bulk_prefetch: int = 40  # the same in an initial sync (throughput over the last rare typo)
    scored: int = 20  # of those, the closest by name that get evidence
    max_postings: int = 100  # a name key shared by more records is generic and not searched by


THRESHOLDS = Thresholds()


def configure(thresholds: Thresholds) -> None:
    """Set once at start from the service's settings."""
    global THRESHOLDS
    THRESHOLDS = thresholds


_CYRILLIC = dict(zip(
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
    ["a", "b", "v", "g", "d", "e", "e", "zh", "z", "i", "y", "k", "l", "m", "n", "o", "p", "r", "s", "t", "u", "f",
     "kh", "ts", "ch", "sh", "shch", "", "y", "", "e", "yu", "ya"], strict=True))
_TO_LATIN = str.maketrans(_CYRILLIC)
_NUMBERS = re.compile(r"\d+")
# Latin spellings that the same Russian sound gets in the wild, folded to one.
_LATIN_FOLDS = [("shch", "sh"), ("sch", "sh"), ("kh", "h"), ("ks", "x"), ("ts", "c"), ("tz", "c"), ("ja", "ya"),
                ("ju", "yu"), ("yo", "e"), ("iy", "y"), ("ij", "y"), ("w", "v"), ("ph", "f"), ("j", "y")]


def transliterate(text: str) -> str:
    """Lower-case Latin with the folds applied until nothing changes, so that
    transliterating twice gives the same as once ("щч" -> "shch" -> "sh")."""
    out = text.lower().translate(_TO_LATIN)
    while True:
        before = out
        for spelling, folded in _LATIN_FOLDS:
            out = out.replace(spelling, folded)
        if out == before:
            return out


@lru_cache(maxsize=65536)
def core_name(name: str) -> str:
    """The name without legal form, quotes, case and script: 'romashka' for ООО «Ромашка»
    and for Romashka LLC."""
    _, core = split_legal_form(name or "")
    return re.sub(r"\s+", " ", transliterate(core)).strip()


KEY_MAX = 60  # characters of one key
SLIP_WORD = (5, 8)  # words this long get one-deletion keys; longer ones half-word keys


def _key_fold(word: str) -> str:
    """Spellings that differ only in y/i or doubled letters get one key."""
    return re.sub(r"(.)\1", r"\1", word.replace("y", "i"))


@lru_cache(maxsize=65536)
def name_tokens(name: str) -> tuple[str, ...]:
    """The words of the core name in Latin, folded (the cross-script keys); one-letter
    words only when the name has nothing longer."""
    words = [w for w in re.split(r"[\s_&]+", core_name(name)) if w]
    return tuple(_key_fold(w) for w in ([w for w in words if len(w) >= 2 or w.isdigit()] or words))


@lru_cache(maxsize=65536)
def native_words(name: str) -> tuple[str, ...]:
    """The words of the core name in their own script (where typing slips happen)."""
    return tuple(w for w in split_legal_form(name or "")[1].split() if w.isalpha())


def _word_keys(tokens: tuple[str, ...]) -> set[str]:
    """Each word, each two neighbours written together, the whole name, and in a name of
    three to five words each pair of words: "Альфа Строй Урал" is found by "Альфа Урал"
    and by "Альфа Стрй Урал", though each of its words is common."""
    keys = {f"t:{t}" for t in tokens}
    keys.update(f"t:{a}{b}" for a, b in itertools.pairwise(tokens))
    if len(tokens) > 1:
        keys.add("n:" + " ".join(sorted(tokens)))
    if 3 <= len(tokens) <= 5:
        keys.update(f"p:{a} {b}" for a, b in itertools.combinations(sorted(set(tokens)), 2))
    return keys


def _deletions(word: str) -> set[str]:
    return {f"d:{word}"} | {f"d:{word[:i]}{word[i + 1:]}" for i in range(len(word))}


def _thirds(word: str, n: int) -> set[str]:
    """For a registry word of n letters (`word` may be one letter off): its first two
    thirds, its last two thirds, and its first and last third. One slip breaks one third
    and leaves one of these intact."""
    t, m = n // 3, len(word)
    return {f"a{n}:{word[:n - t]}", f"b{n}:{word[m - (n - t):]}", f"c{n}:{word[:t]}|{word[m - t:]}"}


def name_keys(name: str) -> set[str]:
    """The keys a registry record is found by: cross-script word keys, and per word of
    its own script either the word and its one-letter deletions (5-8 letters) or its
    thirds (longer words): one typing slip always leaves one of them intact. (A slip in
    a word of four letters or fewer is found only when a letter was added.)"""
    keys = _word_keys(name_tokens(name))
    for w in native_words(name):
        if SLIP_WORD[0] <= len(w) <= SLIP_WORD[1]:
            keys |= _deletions(w)
        elif len(w) > SLIP_WORD[1]:
            keys |= _thirds(w, len(w))
        elif len(w) == SLIP_WORD[0] - 1:  # a letter added to a short word is still found
            keys.add(f"d:{w}")
    return {k[:KEY_MAX] for k in keys}


def query_keys(name: str) -> set[str]:
    """The keys an incoming name looks for: its own words, and what a registry word one
    letter longer, shorter or different would have."""
    keys = _word_keys(name_tokens(name))
    for w in native_words(name):
        m = len(w)
        if SLIP_WORD[0] - 1 <= m <= SLIP_WORD[1] + 1:
            keys |= _deletions(w)
        for n in (m - 1, m, m + 1):
            if n > SLIP_WORD[1]:
                keys |= _thirds(w, n)
    return {k[:KEY_MAX] for k in keys}


def key_weight(key: str, postings: int) -> float:
    """Rarer keys weigh more; a whole word more than half of one."""
    kind = 1.0 if key[0] in "tnp" else 0.6
    return kind * math.log(1 + 1000 / max(1, postings))


@lru_cache(maxsize=65536)
def match_name(name: str) -> str:
    """The name as matching compares it: folded Latin words, legal form dropped. Stored
    with each registry record (`counterparties.match_name`) so that scoring many
    candidates does not normalise their names again."""
    return " ".join(name_tokens(name))[:500]


def _form(name: str, stored: str | None = None) -> str:
    return stored if stored is not None else match_name(name)


def name_score(a: str, b: str, *, b_form: str | None = None) -> float:
    """0..100 on the folded Latin words (token set: word order and extra words do not
    count against); names whose numbers differ are different companies."""
    a, b = match_name(a), _form(b, b_form)
    if not a or not b or _NUMBERS.findall(a) != _NUMBERS.findall(b):
        return 0.0
    return fuzz.token_set_ratio(a, b)


def pre_score(a: str, b: str, *, b_form: str | None = None) -> float:
    """Cheap ordering of many candidates before the evidence: word-set similarity, then
    closeness of the whole name."""
    a, b = match_name(a), _form(b, b_form)
    return fuzz.token_set_ratio(a, b) * 101 + fuzz.ratio(a, b)


def closeness(a: str, b: str, *, b_form: str | None = None) -> float:
    """0..100 on the whole folded names: orders candidates with the same name score, so
    that "Гепе" comes before "Гепе Сервис" for "Гепе"."""
    return fuzz.ratio(match_name(a), _form(b, b_form))


def one_slip_apart(a: str, b: str, *, b_form: str | None = None) -> bool:
    """Names one typing slip apart (a letter changed, dropped, added, or two neighbours
    swapped), transliterated or in their own script; short names do not count. The
    cheap Latin comparison comes first: most candidates are far apart there already."""
    la, lb = match_name(a), _form(b, b_form)
    if _NUMBERS.findall(la) != _NUMBERS.findall(lb):
        return False
    latin = OSA.distance(la, lb, score_cutoff=4)  # one Cyrillic letter is at most 4 Latin edits
    if latin > 4:
        return False
    if latin <= 1 and min(len(la), len(lb)) >= THRESHOLDS.slip_min_length:
        return True
    x, y = split_legal_form(a)[1], split_legal_form(b)[1]
    return min(len(x), len(y)) >= THRESHOLDS.slip_min_length and OSA.distance(x, y, score_cutoff=1) <= 1


def one_digit_apart(a: str | None, b: str | None) -> bool:
    """Same length, one position differs, or two neighbours swapped: a typing slip."""
    if not a or not b or len(a) != len(b) or a == b:
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                              and a[diff[1]] == b[diff[0]])


@dataclass(frozen=True, slots=True)
class Incoming:
    name: str
    inn: str | None = None
    kpp: str | None = None
    ogrn: str | None = None
    inn_valid: bool = False


@dataclass(slots=True)
class Known:
    id: str
    name: str
    status: str
    inn: str | None = None
    kpp: str | None = None
    ogrn: str | None = None
    addresses: tuple[str, ...] = ()
    match_name: str | None = None  # as stored; computed from `name` when absent


@dataclass
class Decision:
    outcome: str  # link | propose | new
    rule: str
    linked_id: str | None = None
    candidates: list[dict] = field(default_factory=list)


def _evidence(incoming: Incoming, known: Known) -> dict:
    score = name_score(incoming.name, known.name, b_form=known.match_name)
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
    if score >= THRESHOLDS.name_propose:
        rules.append("similar_name")
    elif one_slip_apart(incoming.name, known.name, b_form=known.match_name):
        rules.append("name_one_slip")
    elif score >= THRESHOLDS.name_with_id and (agree or "inn_one_digit_from_verified" in rules):
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
    found = [(e, c) for e, c in ((_evidence(incoming, c), c) for c in candidates if c.id not in not_duplicates)
             if e["rules"]]
    rank = {"same_inn_other_kpp": 4, "same_inn": 4, "same_ogrn": 4, "inn_one_digit_from_verified": 3,
            "similar_name": 2, "name_one_slip": 2, "similar_name_with_id": 2}
    found.sort(key=lambda p: (-max(rank[r] for r in p[0]["rules"]), p[0]["status"] != "verified", -p[0]["score"],
                              -closeness(incoming.name, p[1].name, b_form=p[1].match_name)))
    evidence = [e for e, _ in found]
    if evidence:
        return Decision("propose", evidence[0]["rules"][0], None, evidence[:5])
    return Decision("new", "no_similar_record")


class BatchDecisions:
    """Match-or-propose answers worked out at once for a batch of soft syncs (two queries
    for the batch instead of two per organization), each handed out only while it is
    still the answer the organization would get on its own. One organization's answer
    depends only on the records sharing one of its query keys, its INN or its OGRN; an
    answer is withdrawn once a record written earlier in the same transaction (created,
    or changed before or after) shares one of those with it, and that organization is
    then matched on its own against what the transaction now holds."""

    def __init__(self):
        self._answers: dict[object, tuple[Incoming, Decision]] = {}
        self._keys: set[str] = set()
        self._ids: set[str] = set()  # INNs and OGRNs of the records written
        self._generic: set[str] = set()

    def generic(self, keys: set[str]) -> None:
        """Keys that were generic when the answers were worked out: never searched (and a
        generic key only gets more records), so sharing one changes no answer."""
        self._generic |= keys

    def offer(self, ref, item: Incoming, decision: Decision) -> None:
        self._answers[ref] = (item, decision)

    def written(self, name: str | None, inn: str | None, ogrn: str | None) -> None:
        """A record with this name and these identifiers was (or, before a change, had
        been) in the registry within this transaction."""
        self._keys |= name_keys(name or "")
        self._ids.update(i for i in (inn, ogrn) if i)

    def take(self, ref, item: Incoming) -> Decision | None:
        offered = self._answers.pop(ref, None)
        if offered is None or offered[0] != item:
            return None
        if (item.inn and item.inn in self._ids) or (item.ogrn and item.ogrn in self._ids) \
                or not self._keys.isdisjoint(query_keys(item.name) - self._generic):
            return None
        return offered[1]
