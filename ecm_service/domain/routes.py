"""Approval routes are data: one file, one route per document type."""

from __future__ import annotations

import json
from pathlib import Path

from ecm_service.domain.approval import Route, Stage

FALLBACK = "default"


def load_routes(path: Path) -> dict[str, Route]:
    raw = json.loads(path.read_text())
    routes = {
        doc_type: Route(doc_type=doc_type, version=int(spec["version"]),
                        stages=[Stage(name=s["name"], role=s["role"]) for s in spec["stages"]])
        for doc_type, spec in raw.items()
    }
    if FALLBACK not in routes or any(not r.stages for r in routes.values()):
        raise ValueError(f"{path}: needs a '{FALLBACK}' route and at least one stage per route")
    return routes


def route_for(routes: dict[str, Route], doc_type: str) -> Route:
    return routes.get(doc_type) or routes[FALLBACK]
