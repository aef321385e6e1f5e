"""Server-rendered pages' login, shared by both services: a form takes a user's token and
keeps it in an HttpOnly, SameSite=Strict cookie scoped to /ui; every page resolves the
user from it and applies the same rights as the API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlencode

from fastapi import APIRouter, FastAPI, Form, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from infra.service_app import jsonable_errors
from infra.users import User

COOKIE = "session"
# Pages both services share (error.html); each service's own folder comes first, and its
# base.html is what they extend.
SHARED_TEMPLATES = Path(__file__).parent / "templates"


def errors_text(errors: list[dict]) -> str:
    """Pydantic's errors as one line for a page: "country: String should have at most 2
    characters; name: Field required" (the field, not the whole location)."""
    return "; ".join(f"{e['loc'][-1] if e.get('loc') else 'form'}: {e['msg']}" for e in errors)


def back_to(path: str, *, error: str | None = None, done: str | None = None, **keep: str) -> RedirectResponse:
    """After a page's form: back (303) to the page it was on, with what went wrong or what
    was done, and any values the page should show again."""
    query = urlencode({**({"error": error} if error else {"done": done} if done else {}), **keep}, quote_via=quote)
    return RedirectResponse(f"{path}?{query}" if query else path, status_code=303)


def on_page(request: Request) -> bool:
    return request.url.path.startswith("/ui/")


def answer_pages_with_pages(app: FastAPI, error_page: Callable[[Request, int, str], HTMLResponse]) -> None:
    """A refusal on a page (404, 403, a form's field that does not validate) is answered
    with a page that says what went wrong; the login's redirect and the API keep theirs."""
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if on_page(request) and exc.status_code >= 400:
            page = error_page(request, exc.status_code, str(exc.detail))
            page.headers.update(exc.headers or {})  # a 503's Retry-After
            return page
        return await http_exception_handler(request, exc)

    api_answer = app.exception_handlers[RequestValidationError]  # the API's JSON (infra.service_app)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        if on_page(request):
            return error_page(request, 422, errors_text(jsonable_errors(exc)))
        return await api_answer(request, exc)


def page_user_dependency(roles: tuple[str, ...]) -> Callable:
    async def page_user(request: Request) -> User:
        token = request.cookies.get(COOKIE)
        user = await request.app.state.container.users.by_token(token) if token else None
        if user is None or user.role not in roles:
            raise HTTPException(303, headers={"Location": f"/ui/login?next={quote(request.url.path)}"})
        return user

    return page_user


def add_login_routes(router: APIRouter, templates: Jinja2Templates, *, roles: tuple[str, ...],
                     home: Callable[[User], str]) -> None:
    def render(request, status=200, **context):
        return templates.TemplateResponse(request, "login.html", {"user": None, **context}, status_code=status)

    @router.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "/ui/"):
        return render(request, next=next if next.startswith("/ui/") else "/ui/")

    @router.post("/login")
    async def login(request: Request, token: str = Form(..., max_length=200), next: str = Form("/ui/")):
        user = await request.app.state.container.users.by_token(token.strip())
        if user is None or user.role not in roles:
            return render(request, status=401, next=next, error="Unknown token, or an account that has no pages here")
        target = next if next.startswith("/ui/") and next != "/ui/" else home(user)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", path="/ui",
                            secure=request.url.scheme == "https")
        return response

    @router.post("/logout")
    async def logout():
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response
