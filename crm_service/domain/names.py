"""Organization names for duplicate hints: legal forms, quotes, case and ё/е do not make
two names different. Hints only; nothing here blocks a save."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from rapidfuzz import fuzz

# Full forms first, so "общество с ограниченной ответственностью" goes before "ооо".
LEGAL_FORMS = [
    "общество с ограниченной ответственностью", "публичное акционерное общество",
    "непубличное акционерное общество", "закрытое акционерное общество", "открытое акционерное общество",
    "акционерное общество", "индивидуальный предприниматель", "некоммерческая организация",
    "limited liability company", "joint stock company", "limited", "incorporated", "corporation",
    "ооо", "пао", "зао", "оао", "ао", "ип", "нко", "llc", "ltd", "jsc", "gmbh", "inc", "corp", "ag", "sa", "bv",
]
_FORMS = re.compile(r"\b(" + "|".join(re.escape(f) for f in LEGAL_FORMS) + r")\b")
QUOTES = "«»„“”‟\"'`´‘’"
HINT_THRESHOLD = 85.0
_QUOTES_TO_SPACES = {ord(q): " " for q in QUOTES}
_PUNCTUATION = re.compile(r"[^\w\s&]")
_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=65536)  # a hint compares the name with up to 500 others, again and again
def normalize(name: str) -> str:
    """'ООО «Ромашка»' and 'ромашка, ооо' both become 'ромашка'."""
    text = unicodedata.normalize("NFKC", name or "").lower().replace("ё", "е")
    text = text.translate(_QUOTES_TO_SPACES)
    text = _PUNCTUATION.sub(" ", text)
    text = _FORMS.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def name_key(name: str) -> str | None:
    """The blocking key: the longest word of the normalised name (candidates for a hint
    share it), so a hint never scans all organizations."""
    words = sorted(normalize(name).split(), key=lambda w: (-len(w), w))
    return words[0][:100] if words else None


def search_form(name: str) -> str:
    """The whole normalised name, as the organizations' search reads it (its column is
    500 wide, like the name; NFKC can lengthen a name, so it is cut there)."""
    return normalize(name)[:500]


def similarity(a: str, b: str) -> float:
    """0..100 on normalised names. Names whose numbers differ are different companies
    ("Клиент 1" and "Клиент 2", "СМУ-5" and "СМУ-7"), whatever the rest says."""
    a, b = normalize(a), normalize(b)
    if re.findall(r"\d+", a) != re.findall(r"\d+", b):
        return 0.0
    return fuzz.token_set_ratio(a, b)
