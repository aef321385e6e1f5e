"""The initial sync's driver: pages through the CRM's organizations in id order and feeds
them to an ECM reconciliation run in batches, printing progress as JSON lines. Dry run
unless asked to apply; `--resume RUN_ID` continues a run after its last handled id
(resending a batch changes nothing)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

FIELDS = ("id", "name", "inn", "kpp", "ogrn")


async def reconcile(*, crm_url: str, ecm_url: str, crm_token: str, ecm_token: str, apply: bool = False,
                    resume_run: str | None = None, batch: int = 500,
                    emit: Callable[[dict], None] = lambda line: print(json.dumps(line, ensure_ascii=False),
                                                                       flush=True)) -> dict:
    crm = httpx.AsyncClient(base_url=crm_url, headers={"Authorization": f"Bearer {crm_token}"}, timeout=60)
    ecm = httpx.AsyncClient(base_url=ecm_url, headers={"Authorization": f"Bearer {ecm_token}"}, timeout=120)
    async with crm, ecm:
        if resume_run:
            run = (await _ok(ecm.get(f"/api/reconciliation/runs/{resume_run}")))
            if run["status"] != "running":
                raise SystemExit(f"run {resume_run} is {run['status']}; nothing to resume")
        else:
            run = await _ok(ecm.post("/api/reconciliation/runs",
                                     json={"system": "crm", "mode": "apply" if apply else "dry_run"}))
        emit({"run_id": run["id"], "mode": run["mode"], "resumed_after": run.get("cursor")})
        cursor = run.get("cursor") or ""
        while True:
            page = await _ok(crm.get("/api/organizations", params={"after_id": cursor, "limit": batch}))
            if not page["items"]:
                break
            organizations = [{**{k: o.get(k) for k in FIELDS}, "updated_at": o.get("updated_at") or o["created_at"]}
                             for o in page["items"]]
            result = await _ok(ecm.post(f"/api/reconciliation/runs/{run['id']}/batches",
                                        json={"organizations": organizations}))
            cursor = result["cursor"]
            state = await _ok(ecm.get(f"/api/reconciliation/runs/{run['id']}"))
            emit({"run_id": run["id"], "done": state["done"], "cursor": cursor, "counts": state["counts"]})
        final = await _ok(ecm.post(f"/api/reconciliation/runs/{run['id']}/finish"))
        emit({"run_id": run["id"], "finished": True, "done": final["done"], "counts": final["counts"]})
        return final


async def _ok(call) -> dict:
    response = await call
    if response.status_code >= 400:
        raise SystemExit(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                         f"{response.text[:300]}")
    return response.json()
