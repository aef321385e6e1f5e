"""Organization names for duplicate hints: legal forms, quotes, case and ё/е do not make
two names different. Hints only; nothing here blocks a save."""

from __future__ import annotations

import re
import unicodedata

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


def normalize(name: str) -> str:
    """'ООО «Ромашка»' and 'ромашка, ооо' both become 'ромашка'."""
    text = unicodedata.normalize("NFKC", name or "").lower().replace("ё", "е")
    text = text.translate({ord(q): " " for q in QUOTES})
    text = re.sub(r"[^\w\s&]", " ", text)
    text = _FORMS.sub(" ", text)
    return re.sub(r"\s+", " ", text).strip()


def name_key(name: str) -> str | None:
    """The blocking key: the longest word of the normalised name (candidates for a hint
    share it), so a hint never scans all organizations."""
    words = sorted(normalize(name).split(), key=lambda w: (-len(w), w))
    return words[0][:100] if words else None


def similarity(a: str, b: str) -> float:
    """0..100 on normalised names. Names whose numbers differ are different companies
    ("Клиент 1" and "Клиент 2", "СМУ-5" and "СМУ-7"), whatever the rest says."""
    a, b = normalize(a), normalize(b)
    if re.findall(r"\d+", a) != re.findall(r"\d+", b):
        return 0.0
    return fuzz.token_set_ratio(a, b)
