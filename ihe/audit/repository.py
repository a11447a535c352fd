"""The audit record repository (``xds-audit``): syslog over TLS (RFC 5425) and UDP (RFC 5426) into PostgreSQL.

:func:`parse_record` is pure (syslog bytes in, a row out: a message that cannot be read is kept
with the reason, never dropped). Over TLS/TCP each batch of frames is stored in one transaction
and then acknowledged (``ACK <origin> <seq>``, octet counted) so that our senders can forget it;
a record stored before, (origin, seq), is not stored again.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from ihe import tls
from ihe.audit.sender import ack_frame
from ihe.audit.syslog import FrameReader, SyslogError, parse_syslog
from ihe.xml import XMLRejected, parse_xml

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1024 * 1024


@dataclass(slots=True)
class AuditRow:
    message: bytes
    sender_address: str | None
    origin: str | None = None
    seq: int | None = None
    syslog_host: str | None = None
    event_time: datetime | None = None
    event_id: str | None = None
    event_type: str | None = None
    event_action: str | None = None
    outcome: str | None = None
    source_id: str | None = None
    user_id: str | None = None
    user_address: str | None = None
    patient_ids: list[str] = field(default_factory=list)
    object_ids: list[str] = field(default_factory=list)
    parse_error: str | None = None


def _code(el) -> str | None:
    if el is None:
        return None
    return el.get("csd-code") or el.get("code")


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else None


def parse_record(data: bytes, sender_address: str | None) -> AuditRow:
    """The row to store for one syslog message."""
    try:
        msg = parse_syslog(data)
    except SyslogError as exc:
        return AuditRow(message=data, sender_address=sender_address, parse_error=str(exc))
    row = AuditRow(message=msg.payload, sender_address=sender_address, origin=msg.origin, seq=msg.seq,
                   syslog_host=msg.hostname)
    try:
        root = parse_xml(msg.payload, max_bytes=MAX_MESSAGE_BYTES)
    except XMLRejected as exc:
        row.parse_error = exc.reason
        return row
    if root.tag != "AuditMessage":
        row.parse_error = f"root element {root.tag} is not AuditMessage"
        return row
    ident = root.find("EventIdentification")
    if ident is not None:
        row.event_time = _time(ident.get("EventDateTime"))
        row.event_action = ident.get("EventActionCode")
        row.outcome = ident.get("EventOutcomeIndicator")
        row.event_id = _code(ident.find("EventID"))
        row.event_type = _code(ident.find("EventTypeCode"))
    source = root.find("AuditSourceIdentification")
    if source is not None:
        row.source_id = source.get("AuditSourceID")
    requestors = [p for p in root.findall("ActiveParticipant") if p.get("UserIsRequestor", "true") == "true"]
    if requestors:
        row.user_id = " | ".join(p.get("UserID", "") for p in requestors)
        row.user_address = next((p.get("NetworkAccessPointID") for p in requestors
                                 if p.get("NetworkAccessPointID")), None)
    for po in root.findall("ParticipantObjectIdentification"):
        oid = po.get("ParticipantObjectID")
        if not oid:
            continue
        is_patient = po.get("ParticipantObjectTypeCode") == "1" and po.get("ParticipantObjectTypeCodeRole") == "1"
        (row.patient_ids if is_patient else row.object_ids).append(oid)
    if row.event_id is None:
        row.parse_error = "the AuditMessage has no EventID"
    return row


_INSERT = """
INSERT INTO audit_record (origin, seq, event_time, event_id, event_type, event_action, outcome, source_id,
                          syslog_host, sender_address, user_id, user_address, patient_ids, object_ids, parse_error,
                          message)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
ON CONFLICT (origin, seq) DO NOTHING
"""


async def store_rows(conn: asyncpg.Connection, rows: list[AuditRow]) -> None:
    """Store ``rows`` in one transaction; rows already stored (same origin and seq) are skipped."""
    async with conn.transaction():
        await conn.executemany(_INSERT, [
            (r.origin, r.seq, r.event_time, r.event_id, r.event_type, r.event_action, r.outcome, r.source_id,
             r.syslog_host, r.sender_address, r.user_id, r.user_address, r.patient_ids, r.object_ids,
             r.parse_error, r.message) for r in rows])


def acknowledgements(rows: list[AuditRow]) -> list[bytes]:
    """One cumulative acknowledgement per sending spool: its highest sequence number in ``rows``."""
    last: dict[str, int] = {}
    for r in rows:
        if r.origin and r.seq is not None:
            last[r.origin] = max(last.get(r.origin, 0), r.seq)
    return [ack_frame(o, s) for o, s in last.items()]


class AuditReceiver:
    """The listeners: TLS (or plain TCP, for experiments) with octet counting, and UDP."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.servers: list[asyncio.AbstractServer] = []
        self.transports: list[asyncio.BaseTransport] = []
        self.stored = 0
        self._connections: dict[asyncio.Task, asyncio.StreamWriter] = {}

    async def start_stream(self, host: str, port: int, ssl_context: ssl.SSLContext | None,
                           node_tls: tls.NodeTls | None = None) -> None:
        """A stream listener: plain, TLS with ``ssl_context`` (server-authenticated only), or mutual TLS with
        ``node_tls`` through ihe.tls's handshake gate, which logs each refused client in one line (asyncio's
        own TLS server drops a failed handshake silently)."""
        if node_tls is None:
            server = await asyncio.start_server(self._serve_stream, host, port, ssl=ssl_context, reuse_address=True)
        else:
            loop = asyncio.get_running_loop()

            def factory() -> asyncio.StreamReaderProtocol:
                return asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), self._serve_stream, loop=loop)

            server = await tls.create_server(factory, host, port, node_tls, logger=log,
                                             what=f"audit syslog-TLS port {port}")
        self.servers.append(server)

    async def start_udp(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), local_addr=(host, port))
        self.transports.append(transport)

    async def _serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = peer[0] if peer else None
        frames = FrameReader(max_frame=MAX_MESSAGE_BYTES)
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = writer
        try:
            while True:
                data = await reader.read(256 * 1024)
                if not data:
                    return
                try:
                    messages = frames.feed(data)
                except SyslogError as exc:
                    log.warning("audit: syslog stream from %s is not octet-counted (%s); closing it", address, exc)
                    return
                if not messages:
                    continue
                rows = [parse_record(m, address) for m in messages]
                for r in rows:
                    if r.parse_error:
                        log.warning("audit: record from %s kept unparsed: %s", address, r.parse_error)
                async with self.pool.acquire() as conn:
                    await store_rows(conn, rows)
                self.stored += len(rows)
                for ack in acknowledgements(rows):
                    writer.write(ack)
                await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log.info("audit: connection from %s ended: %s", address, exc)
        except Exception:
            log.exception("audit: connection from %s failed; its unacknowledged records will be resent", address)
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def store_datagram(self, data: bytes, address: str | None) -> None:
        row = parse_record(data, address)
        try:
            async with self.pool.acquire() as conn:
                await store_rows(conn, [row])
            self.stored += 1
        except Exception:
            log.exception("audit: a UDP record from %s could not be stored and is lost", address)

    async def close(self) -> None:
        """Stop listening and end the open connections (what a sender sent and did not see acknowledged it
        sends again to the next process), waiting for the batch being stored to finish."""
        for s in self.servers:
            s.close()
        for t in self.transports:
            t.close()
        for writer in list(self._connections.values()):
            writer.transport.abort()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: AuditReceiver) -> None:
        self.receiver = receiver
        self.tasks: set[asyncio.Task] = set()

    def datagram_received(self, data: bytes, addr) -> None:
        task = asyncio.ensure_future(self.receiver.store_datagram(data, addr[0] if addr else None))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


@dataclass(frozen=True, slots=True)
class SearchFilter:
    patient: str | None = None
    user: str | None = None
    node: str | None = None
    event: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 1000


def search_sql(f: SearchFilter) -> tuple[str, list]:
    """SQL for "who saw which patient, when, from where", newest first."""
    where, args = [], []

    def arg(value) -> str:
        args.append(value)
        return f"${len(args)}"

    if f.patient:
        if "^" in f.patient:
            where.append(f"patient_ids @> ARRAY[{arg(f.patient)}]::text[]")
        else:  # a bare id: any assigning authority
            p = arg(f.patient)
            where.append(f"EXISTS (SELECT 1 FROM unnest(patient_ids) pid WHERE pid = {p} OR pid LIKE {p} || '^%')")
    if f.user:
        where.append(f"user_id ILIKE '%' || {arg(f.user)} || '%'")
    if f.node:
        n = arg(f.node)
        where.append(f"(source_id = {n} OR syslog_host = {n} OR sender_address = {n})")
    if f.event:
        e = arg(f.event)
        where.append(f"(event_type = {e} OR event_id = {e})")
    if f.since:
        where.append(f"coalesce(event_time, received_at) >= {arg(f.since)}")
    if f.until:
        where.append(f"coalesce(event_time, received_at) < {arg(f.until)}")
    sql = ("SELECT event_time, received_at, event_type, event_id, event_action, outcome, user_id, user_address, "
           "source_id, patient_ids, object_ids, parse_error FROM audit_record"
           + (" WHERE " + " AND ".join(where) if where else "")
           + f" ORDER BY coalesce(event_time, received_at) DESC, id DESC LIMIT {arg(f.limit)}")
    return sql, args


def format_row(r) -> str:
    """One line: when, what, who, from where, which node, which patients."""
    when = (r["event_time"] or r["received_at"]).isoformat(timespec="seconds")
    parts = [when, r["event_type"] or r["event_id"] or "?", f"action={r['event_action'] or '?'}",
             f"outcome={r['outcome'] or '?'}", f"user={r['user_id'] or '?'}", f"from={r['user_address'] or '?'}",
             f"node={r['source_id'] or '?'}", f"patient={','.join(r['patient_ids']) or '-'}"]
    if r["object_ids"]:
        parts.append(f"objects={','.join(r['object_ids'][:5])}" + (" ..." if len(r["object_ids"]) > 5 else ""))
    if r["parse_error"]:
        parts.append(f"unreadable={r['parse_error']}")
    return "  ".join(parts)
