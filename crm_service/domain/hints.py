"""Gentle identifier hints: shown to the user, never blocking a save."""

from stdnum.exceptions import ValidationError
from stdnum.ru import inn as ru_inn
from stdnum.ru import ogrn as ru_ogrn

KPP_PATTERN_HELP = "KPP is 9 characters: 4 digits, 2 digits or capital letters, 3 digits"


def identifier_hints(*, inn: str | None, kpp: str | None, ogrn: str | None) -> list[str]:
    hints = []
    if inn:
        try:
            ru_inn.validate(inn)
        except ValidationError as exc:
            hints.append(f"INN looks wrong: {exc.message}")
    if ogrn:
        try:
            ru_ogrn.validate(ogrn)
        except ValidationError as exc:
            hints.append(f"OGRN looks wrong: {exc.message}")
    if kpp and not _kpp_ok(kpp):
        hints.append(f"KPP looks wrong: {KPP_PATTERN_HELP}")
    return hints


def _kpp_ok(kpp: str) -> bool:
    return (
        len(kpp) == 9
        and kpp[:4].isdigit()
        and all(c.isdigit() or ("A" <= c <= "Z") for c in kpp[4:6])
        and kpp[6:].isdigit()
    )
