"""PostgreSQL connection: a configured URL, or an embedded server kept in a local folder.

The embedded server (the ``pgserver`` package, PostgreSQL 16) lets the whole system start
on a fresh machine with nothing but Python; production always passes a database URL.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import asyncpg

log = logging.getLogger(__name__)


def start_embedded_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or reuse) an embedded PostgreSQL whose data lives in ``data_dir``; return (url, handle).

    The handle keeps the server alive; pgserver shares one server between processes that
    name the same folder and stops it when the last of them exits.
    """
    import pgserver

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    url = server.get_uri()
    log.info("embedded PostgreSQL running with data in %s", data_dir)
    return url, server


def resolve_database_url(database_url: str | None, data_dir: Path) -> tuple[str, Any]:
    """The URL to use, starting the embedded server when none is configured."""
    if database_url:
        return database_url, None
    return start_embedded_postgres(data_dir / "postgres")


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """Make a released connection safe to reuse without a server round trip.

    asyncpg's default reset sends ``RESET ALL; UNLISTEN *; ...`` on every release, one extra
    round trip per request. Our services set no session state on pooled connections (no LISTEN,
    no session advisory locks, no SET), so only a transaction left open needs undoing.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, command_timeout=60,
                                     reset=_reset_connection)
