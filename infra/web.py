"""HTTP plumbing both services share: correlation ids, bearer auth, health."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable, Iterable

import structlog
from fastapi import Depends, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.content_store import ContentStore, FileTooLarge, Refused
from infra.logs import bind_contextvars, clear_contextvars, new_correlation_id
from infra.spreadsheets import inert_record
from infra.users import User

CORRELATION_HEADER = "X-Correlation-ID"

_bearer = HTTPBearer(auto_error=False)
log = structlog.get_logger()


class CorrelationIdMiddleware:
    """Gives each request a correlation id (the caller's X-Correlation-ID when it sends a
    sane one), binds it to the request's logs, answers with it, and logs the request.
    A plain ASGI middleware: Starlette's BaseHTTPMiddleware runs the app in a task of its
    own with memory streams between, which cost measurable CPU on every call."""

    def __init__(self, app: ASGIApp, service: str):
        self.app = app
        self._service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get(CORRELATION_HEADER, "")
        correlation_id = incoming if 0 < len(incoming) <= 128 else new_correlation_id()
        scope.setdefault("state", {})["correlation_id"] = correlation_id  # request.state.correlation_id
        clear_contextvars()
        bind_contextvars(service=self._service, correlation_id=correlation_id)
        started, status = time.perf_counter(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[CORRELATION_HEADER] = correlation_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["path"] != "/health":
                log.info("http_request", method=scope["method"], path=scope["path"], status=status,
                         duration_ms=round((time.perf_counter() - started) * 1000, 1))


# A JSON \\uXXXX escape of a surrogate half without its partner: Python accepts it, but no
# database can store it (it is not encodable as UTF-8).
_LONE_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                             rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


# JSON's escape of NUL: backslash, u0000, after an even run of other backslashes (each pair
# is an escaped backslash, so a pair before it makes the text "backslash u0000", no NUL).
# PostgreSQL's text cannot hold NUL: "invalid byte sequence for encoding UTF8".
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_NUL_IN_URL = re.compile(rb"%00|\x00")

UNSTORABLE_NUL = ("the request contains a NUL character (\\u0000), which cannot be stored; "
                  "send text without it")
UNSTORABLE_SURROGATE = ("the request contains text with an unpaired UTF-16 surrogate (\\ud800-\\udfff), "
                        "which cannot be stored; send valid Unicode text")


def _storable(text: str | None) -> str | None:
    if text is not None and "\x00" in text:
        raise ValueError(UNSTORABLE_NUL)
    return text


# For text the middleware below does not see, in the JSON a multipart field carries:
# `title: Annotated[str, StorableText] = Field(...)`.
StorableText = AfterValidator(_storable)


def refuse_unstorable(*texts: str | None) -> None:
    """The same for a multipart upload's own text fields (a 422)."""
    if any(text and "\x00" in text for text in texts):
        raise HTTPException(422, UNSTORABLE_NUL)


class RejectUnstorableText:
    """Answers 422 to text that cannot be stored, instead of failing deep inside a
    database driver with a 500 (SQLite takes it, PostgreSQL does not): a NUL character in
    the path, the query or a JSON or form body, and a JSON escape of an unpaired surrogate.
    A plain ASGI middleware (see above): the body it read is handed on to the app as it
    came. File uploads (multipart) are not looked into: bytes are what files hold."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or _NUL_IN_URL.search(scope.get("query_string", b"")):
            await JSONResponse(status_code=422, content={"detail": UNSTORABLE_NUL})(scope, receive, send)
            return
        content_type = Headers(scope=scope).get("content-type", "")
        is_json, is_form = "json" in content_type, "x-www-form-urlencoded" in content_type
        if scope["method"] not in ("POST", "PUT", "PATCH") or not (is_json or is_form):
            await self.app(scope, receive, send)
            return
        chunks, messages = [], []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client went away: the app sees it as it happened
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = None
        if is_json:
            problem = (UNSTORABLE_SURROGATE if _LONE_SURROGATE.search(body)
                       else UNSTORABLE_NUL if b"\x00" in body or (b"\\u0000" in body and _NUL_ESCAPE.search(body))
                       else None)
        elif _NUL_IN_URL.search(body):
            problem = UNSTORABLE_NUL
        if problem:
            await JSONResponse(status_code=422, content={"detail": problem})(scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def current_user(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> User:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    user = await request.app.state.container.users.by_token(credentials.credentials)
    if user is None:
        raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
    bind_contextvars(user_id=user.id, role=user.role)
    return user


def require_roles(*roles: str) -> Callable:
    async def dependency(user: User = Depends(current_user)) -> User:
        if user.role not in roles:
            raise HTTPException(403, f"role {user.role!r} may not do this; allowed: {', '.join(roles)}")
        return user

    return dependency


def correlation_id(request: Request) -> str:
    return request.state.correlation_id


async def receive_upload(store: ContentStore, upload: UploadFile, max_bytes: int,
                         declared_sha256: str | None = None) -> tuple[str, int]:
    """Streams an upload into the content store: (sha256, size); 413 over the limit, 422
    when empty or not the declared sha256. Refused bytes are not kept."""
    try:
        return await run_in_threadpool(store.put, upload.file, max_bytes=max_bytes, expected_sha256=declared_sha256,
                                       allow_empty=False)
    except FileTooLarge as exc:
        raise HTTPException(413, str(exc)) from exc
    except Refused as exc:
        raise HTTPException(422, str(exc)) from exc


def safe_filename(name: str | None, default: str = "document") -> str:
    """A client's file name as shown and offered on download: its last path component
    ("../../etc/passwd" -> "passwd", "C:\\x\\a.pdf" -> "a.pdf"), printable characters only,
    at most 255 characters. Stored files are named by their hash, never by this."""
    base = (name or "").replace("\\", "/").split("/")[-1]
    base = "".join(c for c in base if c.isprintable()).strip()
    return default if base in ("", ".", "..") else base[-255:]


def save_upload(upload, target, limit: int) -> int:
    """Copies an uploaded file to `target` in chunks; ValueError beyond `limit` bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with open(target, "wb") as out:
        while chunk := upload.read(1024 * 1024):
            size += len(chunk)
            if size > limit:
                raise ValueError(f"file exceeds {limit} bytes")
            out.write(chunk)
    return size


def csv_download(records: Iterable[dict], columns: list[str], filename: str) -> Response:
    """Records as a CSV download for a spreadsheet: the named columns in order, UTF-8 with
    a byte order mark (so Excel reads it as UTF-8), and every text cell inert
    (`infra.spreadsheets.inert`: a value typed as `=…` is not a formula)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(inert_record({column: record.get(column) for column in columns}) for record in records)
    return Response(out.getvalue().encode("utf-8-sig"), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})

