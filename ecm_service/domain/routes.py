"""Approval routes are data: a file of one route per document type (loaded at startup)
and an admin API. Every change is a new version; the store keeps them all."""

from __future__ import annotations

import json
from pathlib import Path

from ecm_service.domain.approval import REOPEN_POLICIES, Assignee, Route, Stage

FALLBACK = "default"


class InvalidRoute(ValueError):
    pass


def parse_route(doc_type: str, spec: dict, version: int = 0) -> Route:
    """Validates a route spec; raises InvalidRoute with a message a person can act on."""
    if not isinstance(spec, dict):
        raise InvalidRoute(f"{doc_type}: a route is an object with 'stages'")
    reopen = spec.get("reopen", "all")
    if reopen not in REOPEN_POLICIES:
        raise InvalidRoute(f"{doc_type}: reopen must be one of {', '.join(REOPEN_POLICIES)}")
    raw_stages = spec.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise InvalidRoute(f"{doc_type}: needs at least one stage")
    stages, names = [], set()
    for no, raw in enumerate(raw_stages, start=1):
        where = f"{doc_type} stage {no}"
        if not isinstance(raw, dict) or not str(raw.get("name") or "").strip():
            raise InvalidRoute(f"{where}: needs a name")
        name = str(raw["name"]).strip()[:64]
        if name in names:
            raise InvalidRoute(f"{where}: the name {name!r} is used twice")
        names.add(name)
        # {"role": "legal"} is shorthand for one assignee by role.
        raw_assignees = raw.get("assignees") or ([{"role": raw["role"]}] if raw.get("role") else [])
        assignees = []
        for a in raw_assignees:
            if not isinstance(a, dict) or bool(a.get("role")) == bool(a.get("user")):
                raise InvalidRoute(f"{where}: each assignee is {{\"role\": ...}} or {{\"user\": ...}}")
            assignees.append(Assignee(role=a.get("role"), user=a.get("user")))
        if not assignees:
            raise InvalidRoute(f"{where}: needs at least one assignee")
        quorum = raw.get("quorum")
        if quorum is not None and (not isinstance(quorum, int) or not 1 <= quorum <= len(assignees)):
            raise InvalidRoute(f"{where}: quorum must be between 1 and the number of assignees ({len(assignees)})")
        numbers = {}
        for key in ("deadline_hours", "remind_before_hours"):
            value = raw.get(key)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
                raise InvalidRoute(f"{where}: {key} must be a positive number of hours")
            numbers[key] = float(value) if value is not None else None
        if numbers["remind_before_hours"] and not numbers["deadline_hours"]:
            raise InvalidRoute(f"{where}: a reminder needs a deadline")
        stages.append(Stage(name=name, assignees=tuple(assignees),
                            quorum=quorum if quorum and quorum < len(assignees) else None,
                            escalation_role=raw.get("escalation_role") or None, **numbers))
    return Route(doc_type=doc_type, version=version, stages=tuple(stages), reopen=reopen)


def load_routes(path: Path) -> dict[str, Route]:
    """The routes file: {doc_type: spec}. Versions are assigned by the route store."""
    raw = json.loads(path.read_text())
    try:
        routes = {doc_type: parse_route(doc_type, spec) for doc_type, spec in raw.items()}
    except InvalidRoute as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if FALLBACK not in routes:
        raise ValueError(f"{path}: needs a '{FALLBACK}' route")
    return routes


def route_for(routes: dict[str, Route], doc_type: str) -> Route:
    return routes.get(doc_type) or routes[FALLBACK]
