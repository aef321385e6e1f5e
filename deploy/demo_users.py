"""Demo users for development: at least one per role on each side, plus the bridge's
integration accounts. Tokens are generated once and kept in var/demo-users.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

from infra.tokens import new_token

DEMO_USERS = [
    ("sales-anna", "sales", "crm"),
    ("sales-boris", "sales", "crm"),
    ("sales-manager-maria", "manager", "crm"),
    ("crm-admin", "admin", "crm"),
    ("crm-auditor", "auditor", "crm"),
    ("crm-integration", "integration", "crm"),
    ("legal-lena", "legal", "ecm"),
    ("finance-fedor", "finance", "ecm"),
    ("director-dina", "director", "ecm"),
    ("steward-stas", "steward", "ecm"),
    ("ecm-auditor", "auditor", "ecm"),
    ("ecm-admin", "admin", "ecm"),
    ("ecm-integration", "integration", "ecm"),
]


def ensure_demo_users(path: Path) -> list[dict]:
    """Idempotent: existing tokens are kept, missing users are added."""
    existing = {u["name"]: u for u in json.loads(path.read_text())} if path.exists() else {}
    users = [
        existing.get(name) or {"name": name, "role": role, "service": service, "token": new_token()}
        for name, role, service in DEMO_USERS
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(users, indent=2, ensure_ascii=False) + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return users


def token_of(users: list[dict], name: str) -> str:
    return next(u["token"] for u in users if u["name"] == name)
