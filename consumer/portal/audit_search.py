"""The admin page's audit search (``/admin/audit``, JSON twin ``/api/admin/audit``): who saw which patient,
when, from where, read from the ATNA audit record repository's database (``xds-audit``, ``--audit-database-url``)
with the same query as ``xds-audit search``. Admin role only, like the registry browser."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from consumer.portal.admin import require_admin
from consumer.portal.context import Portal
from ihe.audit.repository import SearchFilter, search_sql
from ihe.database import create_pool

log = logging.getLogger(__name__)

LIMIT = 500
FIELDS = ("patient", "user", "node", "event", "since", "until")


def parse_filter(query: dict[str, str]) -> SearchFilter:
    """The search of the form; ValueError (shown to the user) for a date that is not ISO 8601."""

    def when(name: str) -> datetime | None:
        value = (query.get(name) or "").strip()
        if not value:
            return None
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{name} must be a date or time as 2026-12-06 or 2026-12-06T14:30, "
                             f"not {value!r}") from None
        return t if t.tzinfo else t.replace(tzinfo=UTC)

    def text(name: str) -> str | None:
        return (query.get(name) or "").strip() or None

    return SearchFilter(patient=text("patient"), user=text("user"), node=text("node"), event=text("event"),
                        since=when("since"), until=when("until"), limit=LIMIT)


def row_json(r: Any) -> dict[str, Any]:
    when = r["event_time"] or r["received_at"]
    return {"time": when.isoformat(timespec="seconds") if when else None, "event_type": r["event_type"],
            "event_id": r["event_id"], "action": r["event_action"], "outcome": r["outcome"], "user": r["user_id"],
            "from": r["user_address"], "node": r["source_id"], "patients": list(r["patient_ids"]),
            "objects": list(r["object_ids"]), "unreadable": r["parse_error"]}


async def _pool(portal: Portal) -> asyncpg.Pool:
    pool = portal.extras.get("audit_pool")
    if pool is None:
        pool = portal.extras["audit_pool"] = await create_pool(portal.settings.audit_database_url, min_size=1,
                                                                max_size=2)
    return pool


async def search(portal: Portal, f: SearchFilter) -> list[dict[str, Any]]:
    sql, args = search_sql(f)
    pool = await _pool(portal)
    async with pool.acquire() as conn:
        return [row_json(r) for r in await conn.fetch(sql, *args)]


def build_routes(portal: Portal) -> list[web.RouteDef]:
    from consumer.portal.app import render

    async def run(request: web.Request) -> tuple[dict[str, Any], int]:
        require_admin(request, portal)
        form = {k: request.query.get(k, "") for k in FIELDS}
        result: dict[str, Any] = {"form": form, "rows": [], "error": None, "limit": LIMIT,
                                  "searched": any(form.values())}
        if not portal.settings.audit_database_url:
            result["error"] = ("no audit record repository is configured for this portal (--audit-database-url, the "
                               "database of xds-audit)")
            return result, 503
        try:
            f = parse_filter(request.query)
        except ValueError as exc:
            result["error"] = str(exc)
            return result, 400
        try:
            result["rows"] = await search(portal, f)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("audit search failed: %s", exc)
            result["error"] = f"the audit record repository's database cannot be read: {exc}"[:300]
            return result, 502
        return result, 200

    async def page(request: web.Request) -> web.Response:
        result, status = await run(request)
        return render(request, "audit.html", status=status, result=result)

    async def as_json(request: web.Request) -> web.Response:
        result, status = await run(request)
        return web.json_response(result, status=status)

    return [web.get("/admin/audit", page), web.get("/api/admin/audit", as_json)]
