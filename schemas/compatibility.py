"""BACKWARD compatibility check, in the spirit of Schema Registry's BACKWARD mode:
consumers built from the current schemas must read every message version that may
still sit in a topic. Every golden example ever written (schemas/golden/<type>.v<N>.json,
never deleted) must parse with the current code, older versions through their
upcasters, without losing a field its version carried.

    python -m schemas.compatibility      # exit 1 and a report when something breaks
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from schemas.registry import LATEST, InvalidMessage, parse_message

GOLDEN = Path(__file__).parent / "golden"


def _lost_fields(original, parsed, path="payload") -> list[str]:
    """Fields present in the old message that the upcast, parsed result no longer has."""
    if isinstance(original, dict) and isinstance(parsed, dict):
        return [lost for key, value in original.items()
                for lost in (_lost_fields(value, parsed[key], f"{path}.{key}") if key in parsed else [f"{path}.{key}"])]
    return []


def check(golden_dir: Path = GOLDEN) -> list[str]:
    problems = []
    examples = sorted(golden_dir.glob("*.json"))
    for path in examples:
        raw = json.loads(path.read_text())
        try:
            message = parse_message(path.read_bytes())
        except InvalidMessage as exc:
            problems.append(f"{path.name}: current consumers cannot read it: {exc}")
            continue
        lost = _lost_fields(raw["payload"], message.payload.model_dump(mode="json"))
        if lost:
            problems.append(f"{path.name}: fields dropped on read: {', '.join(lost)}")
    names = {p.name for p in examples}
    for type_, (latest, _) in LATEST.items():
        for version in range(1, latest + 1):
            if f"{type_}.v{version}.json" not in names:
                problems.append(f"{type_} v{version}: no golden example (every version keeps one)")
    return problems


def main() -> int:
    problems = check()
    for problem in problems:
        print(f"INCOMPATIBLE {problem}")
    print(f"schema compatibility: {len(problems)} problem(s) in {len(list(GOLDEN.glob('*.json')))} examples")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
