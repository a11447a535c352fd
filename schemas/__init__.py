"""Database schemas and their migrations, one folder per component (``registry/``, ...).

Migrations are plain SQL files applied in name order; :func:`migrate` records each in
``schema_migration`` and takes an advisory lock, so starting several processes at once
or starting again is harmless.
"""

from __future__ import annotations

from importlib import resources

import asyncpg

_LOCK_KEY = 0x584453  # "XDS"


def migration_files(component: str) -> list[tuple[str, str]]:
    """(name, sql) of every migration of ``component`` in the order they apply."""
    folder = resources.files(__name__) / component
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name, f.read_text(encoding="utf-8")) for f in files]


async def migrate(conn: asyncpg.Connection, component: str) -> list[str]:
    """Apply the pending migrations of ``component``; return the names applied now."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migration ("
            " component text NOT NULL, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, name))"
        )
        done = {
            r["name"]
            for r in await conn.fetch("SELECT name FROM schema_migration WHERE component = $1", component)
        }
        for name, sql in migration_files(component):
            if name in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migration (component, name) VALUES ($1, $2)", component, name)
            applied_now.append(name)
    return applied_now
