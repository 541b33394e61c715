"""``/dashboard``: sign in, sign out, open a share link, and the page itself.

The page's numbers all come from the public read API (``/v1/query``,
``/v1/funnels``, ``/v1/retention``, ``/v1/users/…/summary``, ``/v1/live``,
``/v1/pipeline``, ``/v1/shares``), which accept the session cookie these
routes set in place of a bearer key (api/dependencies.py).

CSRF: the cookie is SameSite=Strict, so another site's page cannot make the
browser send it; on top of that, sign-in refuses a cross-site form, sign-out
checks the session's CSRF token, and the read API asks for the token in a
header on every request that is not a GET.
"""

from __future__ import annotations

import datetime as dt
import hmac
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from redis.exceptions import RedisError

from labs_analytics.api.dependencies import State
from labs_analytics.auth.keys import Scope
from labs_analytics.dashboard import pages
from labs_analytics.dashboard.sessions import SESSION_COOKIE, Session, Viewer
from labs_analytics.logs import get_logger

log = get_logger(__name__)
router = APIRouter(include_in_schema=False)
STATIC_DIR = Path(__file__).parent / "static"
MAX_FORM_BYTES = 4096
REDIS_DOWN = (
    "Dashboard sessions are kept in Redis, which does not answer: sign-in works again when it "
    "is back. Events are still accepted (GET /readyz shows the spool)."
)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers=pages.SECURITY_HEADERS)


def _base(request: Request) -> str:
    """The deployment's path prefix (``root_path`` behind a proxy), "" when served at /."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _refused(request: Request, error: str, status_code: int) -> HTMLResponse:
    """The sign-in page again, saying why."""
    return _html(pages.sign_in_page(_base(request), error=error), status_code)


def _redirect(request: Request, query: str = "") -> RedirectResponse:
    # A path, never a URL built from the client's Host header.
    return RedirectResponse(
        f"{_base(request)}/dashboard{query}", status_code=303, headers={"Cache-Control": "no-store"}
    )


async def _viewer(state: State, request: Request) -> Viewer | None:
    token = request.cookies.get(SESSION_COOKIE)
    return None if token is None else await state.dashboard.resolve(token)


@router.get("/dashboard")
async def dashboard(state: State, request: Request) -> Response:
    try:
        viewer = await _viewer(state, request)
    except (RedisError, OSError):
        return _refused(request, REDIS_DOWN, 503)
    if viewer is None:
        signed_out = "signed-out" in request.query_params
        notice = "Signed out." if signed_out else None
        response = _html(pages.sign_in_page(_base(request), notice=notice))
        if SESSION_COOKIE in request.cookies:  # expired or revoked: forget it
            response.delete_cookie(SESSION_COOKIE, path="/")
        return response
    session = viewer.session
    return _html(
        pages.app_page(
            _base(request),
            product=session.product,
            signed_in_as=viewer.key.key_id,
            csrf=session.csrf,
            is_admin=Scope.ADMIN in viewer.key.scopes,
            is_share=session.is_share,
            expires_at=dt.datetime.fromtimestamp(session.expires_at, dt.UTC).isoformat(),
        )
    )


@router.post("/dashboard/sign-in")
async def sign_in(state: State, request: Request) -> Response:
    if not _same_site(request):
        return _refused(request, "Sign in from this site's own page.", 403)
    form = await _read_form(request)
    if form is None:
        return _refused(request, "The form was too large.", 413)
    token = form.get("key", "").strip()
    if not token:
        return _refused(request, "Paste an API key.", 422)
    key = await state.key_cache.lookup(token)
    if key is None:
        return _refused(request, "Unknown or revoked API key.", 401)
    if not key.allows(Scope.READ):
        return _html(
            pages.sign_in_page(
                _base(request),
                error="This key may only send events. Sign in with a key that has the read "
                "or admin scope.",
            ),
            403,
        )
    try:
        session_token, session = await state.dashboard.sign_in(key)
    except (RedisError, OSError):
        return _refused(request, REDIS_DOWN, 503)
    log.info("dashboard.signed_in", key_id=key.key_id, product=key.product)
    response = _redirect(request)
    _set_session_cookie(response, request, session_token, session)
    return response


@router.post("/dashboard/sign-out")
async def sign_out(state: State, request: Request) -> Response:
    form = await _read_form(request) or {}
    token = request.cookies.get(SESSION_COOKIE)
    if token is not None:
        try:
            viewer = await state.dashboard.resolve(token)
            if viewer is not None:
                if not _csrf_matches(form.get("csrf", ""), viewer.session):
                    stale = "The form was stale: reload the dashboard and sign out again."
                    return _html(pages.message_page(_base(request), "Not signed out", stale), 403)
                await state.dashboard.sign_out(token)
        except (RedisError, OSError):
            return _refused(request, REDIS_DOWN, 503)
    # Post/redirect/get: reloading the page afterwards does not post the form again.
    response = _redirect(request, "?signed-out")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/dashboard/share/{token}")
async def open_share(
    state: State, request: Request, token: Annotated[str, PathParam(max_length=100)]
) -> Response:
    try:
        opened = await state.dashboard.open_share(token)
    except (RedisError, OSError):
        return _refused(request, REDIS_DOWN, 503)
    if opened is None:
        return _html(
            pages.message_page(
                _base(request),
                "Link not valid",
                "This share link has expired or was revoked: ask for a new one.",
            ),
            404,
        )
    session_token, session = opened
    # Trade the link for a cookie and leave its URL, so the token does not stay
    # in the address bar (or the history) while the page is open.
    response = _redirect(request)
    _set_session_cookie(response, request, session_token, session)
    return response


def _set_session_cookie(response: Response, request: Request, token: str, session: Session) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max(1, round(session.expires_at - dt.datetime.now(dt.UTC).timestamp())),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _csrf_matches(sent: str, session: Session) -> bool:
    return hmac.compare_digest(sent.encode(), session.csrf.encode())


def _same_site(request: Request) -> bool:
    """A form posted by a page of this site (Sec-Fetch-Site, else Origin, else allowed)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:  # not a browser, or an old one: nothing cross-site to protect
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def _read_form(request: Request) -> dict[str, str] | None:
    """A small urlencoded form (None when it is larger than MAX_FORM_BYTES)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    except ValueError:  # more fields than any of our forms has
        return None
    return {name: values[0] for name, values in fields.items()}
