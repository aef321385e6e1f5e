"""Name normalisation so that ООО «Ромашка» and ООО "Ромашка" are the same name."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# Full forms first, so "общество с ограниченной ответственностью" becomes "ООО" before
# anything shorter matches inside it.
LEGAL_FORMS = [
    ("ОБЩЕСТВО С ОГРАНИЧЕННОЙ ОТВЕТСТВЕННОСТЬЮ", "ООО"),
    ("ПУБЛИЧНОЕ АКЦИОНЕРНОЕ ОБЩЕСТВО", "ПАО"),
    ("НЕПУБЛИЧНОЕ АКЦИОНЕРНОЕ ОБЩЕСТВО", "АО"),
    ("ЗАКРЫТОЕ АКЦИОНЕРНОЕ ОБЩЕСТВО", "ЗАО"),
    ("ОТКРЫТОЕ АКЦИОНЕРНОЕ ОБЩЕСТВО", "ОАО"),
    ("АКЦИОНЕРНОЕ ОБЩЕСТВО", "АО"),
    ("ИНДИВИДУАЛЬНЫЙ ПРЕДПРИНИМАТЕЛЬ", "ИП"),
    ("НЕКОММЕРЧЕСКАЯ ОРГАНИЗАЦИЯ", "НКО"),
    ("LIMITED LIABILITY COMPANY", "LLC"),
    ("JOINT STOCK COMPANY", "JSC"),
    ("LIMITED", "LTD"),
]
SHORT_FORMS = {"ООО", "ПАО", "АО", "ЗАО", "ОАО", "ИП", "НКО", "LLC", "LTD", "JSC", "GMBH", "AG", "INC", "SA", "BV"}
QUOTES = "«»„“”‟\"'`´‘’"


_QUOTES_TO_SPACE = {ord(q): " " for q in QUOTES}
_PUNCTUATION = re.compile(r"[^\w\s&]")
_SPACES = re.compile(r"\s+")
_FULL_FORMS = [(full, re.compile(rf"\b{full}\b"), short) for full, short in LEGAL_FORMS]


def normalize_name(name: str) -> str:
    """Upper case, ё -> е, quotes and punctuation dropped, full legal forms shortened,
    whitespace collapsed."""
    text = unicodedata.normalize("NFKC", name).upper().replace("Ё", "Е")
    text = _PUNCTUATION.sub(" ", text.translate(_QUOTES_TO_SPACE))
    text = " ".join(_SPACES.split(text)).strip()
    for full, pattern, short in _FULL_FORMS:
        if full in text:  # a cheap test first: most names carry no full form
            text = pattern.sub(short, text)
    return text


@lru_cache(maxsize=65536)
def split_legal_form(name: str) -> tuple[str | None, str]:
    """('ООО', 'РОМАШКА') for any spelling of ООО «Ромашка»."""
    tokens = normalize_name(name).split()
    forms = [t for t in tokens if t in SHORT_FORMS]
    rest = " ".join(t for t in tokens if t not in SHORT_FORMS)
    return (forms[0] if forms else None), rest
