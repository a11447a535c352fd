"""``xds-audit``: the ATNA audit record repository, and searching it.

    xds-audit [serve]                       receive syslog over TLS (6514) and UDP, store in PostgreSQL
    xds-audit search --patient ID --user U --node N --since 2026-12-01 --until ... --event ITI-18
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ihe import tls
from ihe.config import Option, build_parser, resolve
from ihe.database import create_pool, resolve_database_url

OPTIONS: list[Option] = [
    Option("host", "address to listen on", "127.0.0.1"),
    Option("tls-port", "syslog over TLS port (RFC 5425)", 6514, int),
    Option("tls-cert", "PEM certificate (chain) of this repository; the TLS listener needs it"),
    Option("tls-key", "PEM private key of --tls-cert"),
    Option("tls-client-ca", "CA certificates (PEM) client certificates must chain to (mutual TLS, RFC 5425; each "
           "refused sender is logged in one line); when absent clients are not asked for one"),
    Option("udp-port", "syslog over UDP port (RFC 5426); off when absent", None, int),
    Option("tcp-port", "plain TCP syslog port with octet counting, unencrypted (experiments only); off when absent",
           None, int),
    Option("database-url", "PostgreSQL URL; when absent an embedded PostgreSQL is started in --data-dir"),
    Option("data-dir", "folder for the embedded PostgreSQL's data", "data/audit", Path),
    Option("log-level", "logging level", "INFO"),
]


@dataclass(slots=True)
class AuditSettings:
    host: str = "127.0.0.1"
    tls_port: int = 6514
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    udp_port: int | None = None
    tcp_port: int | None = None
    database_url: str | None = None
    data_dir: Path = Path("data/audit")
    log_level: str = "INFO"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AuditSettings:
        return cls(**{k: v for k, v in values.items() if v is not None})


def server_ssl_context(cert: str, key: str | None, client_ca: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(tls.STRONG_CIPHERS)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def open_pool(database_url: str):
    from schemas import migrate

    pool = await create_pool(database_url, min_size=1, max_size=10)
    async with pool.acquire() as conn:
        await migrate(conn, "audit")
    return pool


def listener_tls(settings: AuditSettings) -> tls.NodeTls | None:
    """With --tls-client-ca, the listener's mutual TLS (ihe.tls: strong suites, a client certificate from that
    CA required, refusals logged); None otherwise. Raises tls.TlsSetupError for bad files."""
    if not (settings.tls_cert and settings.tls_client_ca):
        return None
    if not settings.tls_key:
        raise tls.TlsSetupError("--tls-cert needs --tls-key")
    config = tls.TlsConfig(Path(settings.tls_cert), Path(settings.tls_key), Path(settings.tls_client_ca))
    return tls.NodeTls(config, tls.server_context(config), tls.client_context(config),
                       tls.server_context(config, gated=True))


async def serve(settings: AuditSettings, database_url: str) -> int:
    from ihe.audit.repository import AuditReceiver

    try:
        node_tls = listener_tls(settings)
    except tls.TlsSetupError as exc:
        print(f"audit repository: {exc}", file=sys.stderr, flush=True)
        return 2

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pool = await open_pool(database_url)
    receiver = AuditReceiver(pool)
    try:
        if settings.tls_cert and settings.tls_client_ca:
            await receiver.start_stream(settings.host, settings.tls_port, None, node_tls)
            print(f"audit repository: syslog over mutual TLS at {settings.host}:{settings.tls_port} (client "
                  f"certificates issued by {settings.tls_client_ca} required)", flush=True)
        elif settings.tls_cert:
            ctx = server_ssl_context(settings.tls_cert, settings.tls_key, None)
            await receiver.start_stream(settings.host, settings.tls_port, ctx)
            print(f"audit repository: syslog over TLS at {settings.host}:{settings.tls_port} (no --tls-client-ca: "
                  "any client is accepted)", flush=True)
        else:
            print("audit repository: no --tls-cert, so no TLS listener", flush=True)
        if settings.tcp_port:
            await receiver.start_stream(settings.host, settings.tcp_port, None)
            print(f"audit repository: plain TCP syslog (UNENCRYPTED) at {settings.host}:{settings.tcp_port}",
                  flush=True)
        if settings.udp_port:
            await receiver.start_udp(settings.host, settings.udp_port)
            print(f"audit repository: syslog over UDP at {settings.host}:{settings.udp_port}", flush=True)
        if not (settings.tls_cert or settings.tcp_port or settings.udp_port):
            print("audit repository: nothing to listen on (give --tls-cert/--tls-key, --udp-port or --tcp-port)",
                  file=sys.stderr, flush=True)
            return 2
        await stop.wait()
        return 0
    finally:
        await receiver.close()
        await pool.close()


def _when(value: str) -> datetime:
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


async def search(database_url: str, f) -> int:
    from ihe.audit.repository import format_row, search_sql

    pool = await open_pool(database_url)
    try:
        sql, args = search_sql(f)
        async with pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
    finally:
        await pool.close()
    for r in rows:
        print(format_row(r))
    print(f"{len(rows)} audit records", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("audit", "IHE ATNA audit record repository (ITI-20: syslog over TLS and UDP)", OPTIONS)
    parser.add_argument("command", nargs="?", default="serve", choices=("serve", "search"))
    parser.add_argument("--patient", help="search: patient id (CX, or a bare id of any authority)")
    parser.add_argument("--user", help="search: requesting user or system (substring)")
    parser.add_argument("--node", help="search: the auditing node (AuditSourceID, host or address)")
    parser.add_argument("--event", help="search: transaction (ITI-18, RAD-69, ...) or EventID code")
    parser.add_argument("--since", type=_when, help="search: from this time (ISO 8601)")
    parser.add_argument("--until", type=_when, help="search: before this time (ISO 8601)")
    parser.add_argument("--limit", type=int, default=1000, help="search: most records listed (newest first)")
    args = parser.parse_args(argv)
    settings = AuditSettings.from_dict(resolve("audit", OPTIONS, args))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    database_url, embedded = resolve_database_url(settings.database_url, settings.data_dir)
    try:
        if args.command == "search":
            from ihe.audit.repository import SearchFilter

            f = SearchFilter(patient=args.patient, user=args.user, node=args.node, event=args.event,
                             since=args.since, until=args.until, limit=args.limit)
            return asyncio.run(search(database_url, f))
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(serve(settings, database_url))
        return 0
    finally:
        del embedded


if __name__ == "__main__":
    sys.exit(main())
