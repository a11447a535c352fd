"""Server-side sessions in PostgreSQL, CSRF tokens and the security headers of every answer.

The cookie holds a random token; the database holds its SHA-256, the user, role and organisation,
a CSRF token, and the sign-in and last-request times. A session ends after ``session_idle``
seconds without a request or ``session_lifetime`` seconds after sign-in, whichever comes first,
or at sign-out. Every POST must carry the session's CSRF token (form field ``csrf_token`` or
header ``X-CSRF-Token``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

import asyncpg
from aiohttp import web

COOKIE = "xds_portal_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

# No inline script or style, nothing from elsewhere, no framing, no plugins. Routes that need more
# (the viewer) set their own Content-Security-Policy, which is then left alone.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
# Paths answered as data (JSON, DICOMweb): no session means 401, not a redirect to the sign-in page.
API_PREFIXES = ("/api/", "/dicomweb")
PUBLIC_PREFIXES = ("/static/",)
CACHEABLE_PREFIXES = ("/static/", "/viewer/")  # application files, no patient data


@dataclass(frozen=True, slots=True)
class PortalSession:
    user: str
    role: str | None
    organisation: str | None
    csrf_token: str
    subject: str = ""


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


async def create_session(conn: asyncpg.Connection, subject: str, user: str, role: str | None,
                         organisation: str | None) -> tuple[str, PortalSession]:
    """A new session; (cookie token, session)."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO portal_session (token_hash, subject, user_name, role, organisation, csrf_token) "
        "VALUES ($1, $2, $3, $4, $5, $6)", token_hash(token), subject, user, role, organisation, csrf)
    return token, PortalSession(user, role, organisation, csrf, subject)


async def load_session(conn: asyncpg.Connection, token: str, idle: int, lifetime: int) -> PortalSession | None:
    """The live session of ``token``, its last-seen time moved to now; None when absent or expired
    (an expired one is deleted)."""
    row = await conn.fetchrow(
        "UPDATE portal_session SET last_seen_at = now() WHERE token_hash = $1 "
        "AND last_seen_at > now() - make_interval(secs => $2) AND created_at > now() - make_interval(secs => $3) "
        "RETURNING subject, user_name, role, organisation, csrf_token",
        token_hash(token), float(idle), float(lifetime))
    if row is None:
        await conn.execute("DELETE FROM portal_session WHERE token_hash = $1", token_hash(token))
        return None
    return PortalSession(row["user_name"], row["role"], row["organisation"], row["csrf_token"], row["subject"])


async def delete_session(conn: asyncpg.Connection, token: str) -> None:
    await conn.execute("DELETE FROM portal_session WHERE token_hash = $1", token_hash(token))


async def purge_expired(conn: asyncpg.Connection, idle: int, lifetime: int) -> int:
    result = await conn.execute(
        "DELETE FROM portal_session WHERE last_seen_at <= now() - make_interval(secs => $1) "
        "OR created_at <= now() - make_interval(secs => $2)", float(idle), float(lifetime))
    return int(result.split()[-1])


def set_session_cookie(response: web.StreamResponse, token: str, *, secure: bool, max_age: int) -> None:
    response.set_cookie(COOKIE, token, httponly=True, secure=secure, samesite="Lax", path="/", max_age=max_age)


def clear_session_cookie(response: web.StreamResponse, *, secure: bool) -> None:
    response.set_cookie(COOKIE, "", httponly=True, secure=secure, samesite="Lax", path="/", max_age=0,
                        expires="Thu, 01 Jan 1970 00:00:00 GMT")


def is_api(request: web.Request) -> bool:
    return request.path.startswith(API_PREFIXES) or request.headers.get("Accept", "").startswith("application/json")


def require_session(request: web.Request) -> PortalSession:
    """The request's session; else 401 for data paths, a redirect to sign-in for pages."""
    session = request.get("session")
    if session is not None:
        return session
    if is_api(request):
        raise web.HTTPUnauthorized(text="sign in to the portal first: no valid session",
                                   headers={"WWW-Authenticate": 'Cookie realm="xds-portal"'})
    back = request.path_qs if request.method == "GET" else "/"  # a form's target cannot be gone back to
    raise web.HTTPFound(f"/login?next={quote(back, safe='')}")


async def check_csrf(request: web.Request, session: PortalSession) -> None:
    """Refuse (403) a state-changing request without the session's CSRF token."""
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        sent = (await request.post()).get(CSRF_FIELD)
    if not session.csrf_token or not isinstance(sent, str) or not hmac.compare_digest(sent, session.csrf_token):
        raise web.HTTPForbidden(text="refused: the form's CSRF token is missing or wrong (reload the page and "
                                     "try again)")


BearerCheck = Callable[[str], Awaitable[PortalSession | None]]


def session_middleware(pool: asyncpg.Pool, idle: int, lifetime: int, secure: bool,
                       exempt_csrf: frozenset[str] = frozenset(), bearer: BearerCheck | None = None) -> Callable:
    """Loads ``request["session"]`` and checks the CSRF token of unsafe methods.

    With ``bearer``, a data path (``/api/``) may instead carry ``Authorization: Bearer <access token>``
    of the same provider (an EPR calling the JSON twin); such requests are read-only (GET)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if request.path.startswith(PUBLIC_PREFIXES):  # static files: no database round trip
            return await handler(request)
        token = request.cookies.get(COOKIE)
        expired = False
        authorization = request.headers.get("Authorization", "")
        if (bearer is not None and not token and request.method == "GET" and request.path.startswith("/api/")
                and authorization[:7].lower() == "bearer "):
            session = await bearer(authorization[7:].strip())
            if session is None:
                raise web.HTTPUnauthorized(text="the access token is not valid at the identity provider",
                                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
            request["session"] = session
        elif token:
            async with pool.acquire() as conn:
                session = await load_session(conn, token, idle, lifetime)
            if session is not None:
                request["session"] = session
            else:
                expired = True
        try:
            if request.method not in ("GET", "HEAD", "OPTIONS") and request.path not in exempt_csrf:
                current = request.get("session")
                if current is None:
                    require_session(request)
                await check_csrf(request, current)
            response = await handler(request)
        except web.HTTPException as exc:
            if expired:
                clear_session_cookie(exc, secure=secure)
            raise
        if expired and COOKIE not in response.cookies:
            clear_session_cookie(response, secure=secure)
        return response

    return middleware


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` signal: the security headers of every answer, streamed ones included.
    A handler that set its own Content-Security-Policy (the viewer) keeps it."""
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")
    if not request.path.startswith(CACHEABLE_PREFIXES):  # pages, JSON and documents carry patient data
        headers.setdefault("Cache-Control", "no-store")
