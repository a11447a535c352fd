"""PostgreSQL connection: a configured URL, or an embedded server kept in a local folder.

The embedded server (the ``pgserver`` package, PostgreSQL 16) lets the whole system start
on a fresh machine with nothing but Python; production always passes a database URL.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import asyncpg

log = logging.getLogger(__name__)


def start_embedded_postgres(data_dir: Path | str) -> tuple[str, Any]:
    """Start (or reuse) an embedded PostgreSQL whose data lives in ``data_dir``; return (url, handle).

    The handle keeps the server alive; pgserver shares one server between processes that
    name the same folder and stops it when the last of them exits.
    """
    with warnings.catch_warnings():  # a server without a login session has no XDG_RUNTIME_DIR; /tmp is fine
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import pgserver

    # pgserver logs every pg_ctl call at INFO; only its problems belong in our log.
    logging.getLogger("pgserver").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    _forget_exited_users(data_dir)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    url = server.get_uri()
    _stop_on_sigterm()
    log.info("embedded PostgreSQL running with data in %s", data_dir)
    return url, server


def _as_ctrl_c(signum: int, frame: Any) -> None:
    signal.raise_signal(signal.SIGINT)


def _stop_on_sigterm() -> None:
    """Let SIGTERM (systemd, docker, xds-local) end the process as Ctrl-C does.

    By default SIGTERM ends Python without unwinding, so pgserver's exit hook never runs and the
    embedded server is left running. Passing it on as SIGINT reuses each service's Ctrl-C path
    (asyncio cancels the main task, pools close). A handler the service installed itself is kept.
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _as_ctrl_c)


def _forget_exited_users(data_dir: Path) -> None:
    """Drop processes that died without unwinding from pgserver's list of the server's users.

    pgserver stops the server when its last user exits, judged by a pid list in the data folder;
    one killed process would otherwise keep the server running forever after.
    """
    import psutil
    from pgserver.postgres_server import PostgresServer

    pids_file = data_dir / ".handle_pids.json"
    with PostgresServer._lock:  # the lock pgserver holds while it edits the list
        try:
            pids = json.loads(pids_file.read_text())
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            pids_file.write_text(json.dumps(alive))


def resolve_database_url(database_url: str | None, data_dir: Path | str) -> tuple[str, Any]:
    """The URL to use, starting the embedded server when none is configured."""
    if database_url:
        return database_url, None
    return start_embedded_postgres(Path(data_dir) / "postgres")


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


async def rollback_or_discard(conn: asyncpg.Connection, transaction: str) -> None:
    """Roll back an open transaction after a failure; a connection that cannot even roll back is
    terminated, so the pool discards it instead of handing out a connection in an unknown state."""
    if conn.is_closed() or not conn.is_in_transaction():
        return
    try:
        await conn.execute("ROLLBACK")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        log.warning("%s: ROLLBACK failed; the pool discards the connection", transaction, exc_info=True)
        conn.terminate()
