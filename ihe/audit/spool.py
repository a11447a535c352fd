"""A durable, bounded, append-only spool of audit records, kept until the repository acknowledges them.

Layout of a spool folder: ``origin`` (a UUID naming this spool for good: with the sequence number
it is the record's identity at the audit record repository, which drops duplicates),
``acked`` (the highest acknowledged sequence number, replaced atomically), ``lock`` (held by the
one process using the folder) and segment files ``<first seq>.seg`` of records::

    b"R" | seq (8 bytes) | length (4 bytes) | crc32 (4 bytes) | payload

Each append is fsync'd before it returns, so a record the service has written is never lost to a
crash or ``kill -9``; a torn record at the end of the last segment (crash mid-write) is cut off at
the next open. Acknowledgements are written to ``acked`` at most every ``ACK_PERSIST_INTERVAL``
seconds (after a crash the few acknowledged since are sent again, and the repository drops them
as duplicates); a segment is deleted only once ``acked`` on disk covers all its records, so a
sequence number is never used twice.

When the spool holds ``max_bytes`` of unacknowledged records it is *full*: :meth:`has_room` is
false and the services refuse new work (the promise is that every access is audited, so we stop
serving rather than serve unaudited or drop records); an ERROR alarm is logged. Records of work
already admitted are still written, so the bound is exceeded by at most the requests in flight.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_HEAD = struct.Struct(">cQII")
MAGIC = b"R"
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
MAX_SLOTS = 256
ALARM_INTERVAL = 60.0
ACK_PERSIST_INTERVAL = 0.5


class SpoolFull(RuntimeError):
    """The spool holds its maximum of unacknowledged records."""


class SpoolBusy(RuntimeError):
    pass


@dataclass(slots=True)
class _Entry:
    seq: int
    segment: Path
    offset: int  # of the payload
    length: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Spool:
    """One process's spool folder; thread-safe."""

    def __init__(self, folder: Path, *, max_bytes: int, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 durable: bool = True) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.durable = durable
        self.origin = ""
        self.acked = 0
        self.next_seq = 1
        self.pending_bytes = 0
        self._entries: deque[_Entry] = deque()
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()  # one fsync at a time; it covers every record written before it
        self._written = 0  # highest sequence number written to the current segment
        self._ack_lock = threading.Lock()
        self._persisted_ack = 0  # the acknowledged sequence number on disk
        self._persisted_at = 0.0
        self._segment_last: dict[Path, int] = {}  # highest sequence number in each segment
        self._synced = 0  # highest sequence number known to be on disk
        self._appended = threading.Condition(self._lock)
        self._lock_fh = None
        self._segment: Path | None = None
        self._fh = None
        self._last_alarm = 0.0

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open_slot(cls, base: Path, **kwargs) -> Spool:
        """Open the first spool folder under ``base`` no live process holds (``base/0``, ``base/1``...).

        Processes sharing a port each get their own folder; a restarted process takes over the
        folder of the one that died, and so resends what it left unacknowledged.
        """
        base = Path(base)
        for i in range(MAX_SLOTS):
            spool = cls(base / str(i), **kwargs)
            try:
                spool.open()
            except SpoolBusy:
                continue
            return spool
        raise SpoolBusy(f"all {MAX_SLOTS} audit spool folders under {base} are in use")

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.folder / "lock", "a+b")  # noqa: SIM115 - held for the spool's life
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise SpoolBusy(f"audit spool {self.folder} is used by another process") from None
        self._lock_fh = fh
        origin_file = self.folder / "origin"
        if not origin_file.exists():
            _write_atomic(origin_file, uuid.uuid4().hex.encode("ascii"))
        self.origin = origin_file.read_text("ascii").strip()
        acked_file = self.folder / "acked"
        self.acked = int(acked_file.read_text("ascii").strip() or 0) if acked_file.exists() else 0
        self._persisted_ack = self.acked
        self.next_seq = self.acked + 1
        segments = sorted(self.folder.glob("*.seg"))
        for seg in segments:
            self._scan(seg, last=seg == segments[-1])
        self._drop_acked_segments()
        if self._entries:
            log.info("audit spool %s: %d records await delivery", self.folder, len(self._entries))

    def _scan(self, seg: Path, *, last: bool) -> None:
        data = seg.read_bytes()
        pos = 0
        while pos < len(data):
            if len(data) - pos < _HEAD.size:
                break
            magic, seq, length, crc = _HEAD.unpack_from(data, pos)
            start, end = pos + _HEAD.size, pos + _HEAD.size + length
            if magic != MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
                break
            if seq > self.acked:
                self._entries.append(_Entry(seq, seg, start, length))
                self.pending_bytes += _HEAD.size + length
            self.next_seq = max(self.next_seq, seq + 1)
            self._segment_last[seg] = seq
            pos = end
        if pos < len(data):
            if not last:
                log.error("audit spool segment %s is damaged at byte %d; the records after it are lost", seg, pos)
            else:
                log.warning("audit spool %s: cutting off a record torn by a crash at byte %d", seg, pos)
            with open(seg, "r+b") as fh:
                fh.truncate(pos)
                os.fsync(fh.fileno())
        if pos == 0:
            seg.unlink()

    # -- writing -------------------------------------------------------------------------------
    def has_room(self) -> bool:
        if self.pending_bytes < self.max_bytes:
            return True
        now = time.monotonic()
        if now - self._last_alarm > ALARM_INTERVAL:
            self._last_alarm = now
            log.error("ALARM: audit spool %s is full (%d bytes unacknowledged, limit %d): the audit record "
                      "repository is unreachable or too slow; new requests are refused until it catches up",
                      self.folder, self.pending_bytes, self.max_bytes)
        return False

    def append(self, build) -> int:
        """Append the record ``build(origin, seq)`` returns, durably; return its sequence number.

        Group commit: threads appending at the same time share one fsync, so the cost of
        durability is paid per burst, not per record. It returns only once the record is on disk.
        """
        with self._lock:
            seq = self.next_seq
            payload = build(self.origin, seq)
            if self._fh is None or self._fh.tell() >= self.segment_bytes:
                self._roll(seq)
            record = _HEAD.pack(MAGIC, seq, len(payload), zlib.crc32(payload)) + payload
            offset = self._fh.tell() + _HEAD.size
            self._fh.write(record)
            self._fh.flush()
            self.next_seq = seq + 1
            self._written = seq
            self._entries.append(_Entry(seq, self._segment, offset, len(payload)))
            self._segment_last[self._segment] = seq
            self.pending_bytes += len(record)
            self._appended.notify_all()
        if self.durable:
            with self._sync_lock:
                if self._synced < seq:
                    with self._lock:
                        target, fd = self._written, os.dup(self._fh.fileno())
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    self._synced = max(self._synced, target)
        return seq

    def _roll(self, seq: int) -> None:
        if self._fh is not None:
            if self.durable:
                os.fsync(self._fh.fileno())  # the previous segment is complete on disk before a new one
                self._synced = max(self._synced, self._written)
            self._fh.close()
        self._segment = self.folder / f"{seq:020d}.seg"
        self._fh = open(self._segment, "ab")  # noqa: SIM115 - closed at the next roll or close()
        _fsync_dir(self.folder)

    # -- reading and acknowledging ---------------------------------------------------------------
    def wait(self, timeout: float) -> None:
        with self._lock:
            if not self._entries:
                self._appended.wait(timeout)

    def pending(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest unacknowledged records, in order."""
        with self._lock:
            entries = [self._entries[i] for i in range(min(limit, len(self._entries)))]
        out = []
        handles: dict[Path, object] = {}
        try:
            for e in entries:
                fh = handles.get(e.segment)
                if fh is None:
                    fh = handles[e.segment] = open(e.segment, "rb")  # noqa: SIM115
                fh.seek(e.offset)
                out.append((e.seq, fh.read(e.length)))
        finally:
            for fh in handles.values():
                fh.close()
        return out

    def ack(self, seq: int, *, persist: bool = False) -> None:
        """Everything up to ``seq`` is stored at the repository: forget it (on disk now when ``persist``,
        else within ``ACK_PERSIST_INTERVAL``)."""
        with self._lock:
            if seq > self.acked:
                self.acked = seq
                while self._entries and self._entries[0].seq <= seq:
                    e = self._entries.popleft()
                    self.pending_bytes -= _HEAD.size + e.length
        if persist or time.monotonic() - self._persisted_at >= ACK_PERSIST_INTERVAL:
            self.persist_ack()

    def persist_ack(self) -> None:
        """Write the acknowledged sequence number to disk, then delete the segments it covers."""
        with self._ack_lock:
            acked = self.acked
            self._persisted_at = time.monotonic()
            if acked <= self._persisted_ack:
                return
            _write_atomic(self.folder / "acked", str(acked).encode("ascii"))
            self._persisted_ack = acked
            self._drop_acked_segments()

    def _drop_acked_segments(self) -> None:
        with self._lock:
            done = [seg for seg, last in self._segment_last.items()
                    if last <= self._persisted_ack and seg != self._segment]
            for seg in done:
                del self._segment_last[seg]
        for seg in done:
            seg.unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        if self._lock_fh is not None:
            self.persist_ack()
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            if self._lock_fh is not None:
                self._lock_fh.close()
                self._lock_fh = None
