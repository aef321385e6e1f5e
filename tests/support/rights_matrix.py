"""Runs a role x action matrix against an app: every row, every role, no token and a
wrong token. A call is "allowed" when it gets past authorisation (not 401/403)."""

from __future__ import annotations

import httpx

# Every ECM role, as the tests name them (not read from the code whose rights they check).
ECM_ROLES = ("legal", "finance", "director", "steward", "auditor", "admin", "integration")


def allowed(response: httpx.Response) -> bool:
    assert response.status_code < 500, response.text
    return response.status_code not in (401, 403)


async def mismatches(client: httpx.AsyncClient, matrix, tokens: dict[str, str], ids: dict) -> list[str]:
    wrong = []
    for method, template, body, permitted in matrix:
        path = template.format(**ids)
        kwargs = {"json": body} if body is not None else {}
        callers = [*((role, {"Authorization": f"Bearer {token}"}) for role, token in tokens.items()),
                   ("no token", {}), ("wrong token", {"Authorization": "Bearer nope"})]
        for who, headers in callers:
            got = allowed(await client.request(method, path, headers=headers, **kwargs))
            if got != (who in permitted):
                wrong.append(f"{method} {template} as {who}: {'allowed' if got else 'refused'}")
    return wrong


async def uncovered(client: httpx.AsyncClient, matrix, renames: dict[str, str]) -> set[tuple[str, str]]:
    """API operations in the app's OpenAPI document that no matrix row covers."""
    spec = (await client.get("/openapi.json")).json()

    def key(method: str, path: str) -> tuple[str, str]:
        for old, new in renames.items():
            path = path.replace(old, new)
        return method.upper(), path

    declared = {key(m, p) for p, ops in spec["paths"].items() for m in ops if p.startswith("/api/")}
    return declared - {key(m, p) for m, p, _, _ in matrix}
