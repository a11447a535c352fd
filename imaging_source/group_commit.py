"""Group commit of received instances: many C-STOREs, few durable writes.

Each C-STORE (a coroutine of the Storage SCP, or a thread calling ``submit``) stages its file without
fsync, hands it to the writer and waits for the answer. One flusher task on the service's event loop
takes everything that is waiting, makes those files durable together (fsync in parallel, rename, one fsync per folder),
indexes them in one transaction (a savepoint per instance, so a refused instance fails alone) and
only then answers each handler. The guarantee is the one of a single write — file and index row
durable before the success status — but the fsyncs and the commit are shared by every instance that
arrived meanwhile, from every association.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import asyncpg

from imaging_source import store
from imaging_source.ingest import StoredInstance
from imaging_source.storage import FileStorage, StagedFile, StorageError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    stored: StoredInstance
    staged: StagedFile | None  # None: these bytes were already stored under the key
    # An asyncio future (a coroutine on the writer's loop waits) or a concurrent one (another thread waits);
    # either may have been given up on (cancelled, timed out): it is answered only if still waited for.
    future: asyncio.Future[bool] | concurrent.futures.Future[bool]


class GroupCommitWriter:
    """Makes staged instances durable and indexed in batches; ``submit`` may be called from any thread."""

    def __init__(self, storage: FileStorage, pool: asyncpg.Pool, loop: asyncio.AbstractEventLoop, *,
                 max_batch: int = 256, fsync_threads: int = 8) -> None:
        self.storage = storage
        self.pool = pool
        self.loop = loop
        self.max_batch = max_batch
        self.batches = 0  # flushes done, and instances in them: for tests and the log
        self.flushed = 0
        self._queue: deque[_Pending] = deque()
        self._lock = threading.Lock()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(fsync_threads, thread_name_prefix="fsync")
        self._task: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        """Run the flusher on the loop (callable from the loop's thread or any other)."""
        if self._task is None:
            self._task = asyncio.run_coroutine_threadsafe(self.run(), self.loop)

    def stop(self) -> None:
        """Stop the flusher; instances still waiting are answered with a failure."""
        if self._task is not None:
            self._task.cancel()

    def submit(self, stored: StoredInstance, staged: StagedFile | None) -> concurrent.futures.Future[bool]:
        """Queue one instance; the future gives whether it is new, or raises StorageError."""
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()
        with self._lock:
            self._queue.append(_Pending(stored, staged, future))
        self.loop.call_soon_threadsafe(self._wakeup.set)
        return future

    async def store(self, stored: StoredInstance, staged: StagedFile | None) -> bool:
        """Keep one instance (from a coroutine on the writer's loop): whether it is new, or StorageError."""
        future: asyncio.Future[bool] = self.loop.create_future()
        with self._lock:
            self._queue.append(_Pending(stored, staged, future))
        self._wakeup.set()
        return await future

    async def run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while batch := self._take():
                    try:
                        await self.flush(batch)
                    except BaseException as exc:  # every handler must get an answer
                        if not isinstance(exc, asyncio.CancelledError):
                            log.exception("group commit of %d instances failed", len(batch))
                        _fail_all(batch, StorageError(f"could not store: {exc!r}"))
                        if not isinstance(exc, Exception):
                            raise
        finally:
            left = self._take(len(self._queue) + 1)
            for p in left:
                if p.staged is not None:
                    self.storage.discard(p.staged)
            _fail_all(left, StorageError("the storage service is stopping"))
            self._executor.shutdown(wait=False)

    def _take(self, limit: int | None = None) -> list[_Pending]:
        with self._lock:
            n = min(len(self._queue), limit or self.max_batch)
            return [self._queue.popleft() for _ in range(n)]

    async def flush(self, batch: list[_Pending]) -> None:
        """Files durable first, then every index row in one transaction, then the answers."""
        items: list[StagedFile | str] = [p.staged if p.staged is not None else p.stored.key for p in batch]
        started = time.perf_counter()
        try:
            errors = await self.storage.make_durable_async(items, self._executor)
        except BaseException:
            for p in batch:
                if p.staged is not None:
                    self.storage.discard(p.staged)
            raise
        files_done = time.perf_counter()
        failed: list[tuple[_Pending, StorageError]] = [(p, e) for p, e in zip(batch, errors, strict=True) if e]
        durable = [p for p, e in zip(batch, errors, strict=True) if e is None]
        indexed: list[tuple[_Pending, bool, str | None]] = []
        outcome_unknown = False
        if durable:
            try:
                async with self.pool.acquire() as conn:
                    indexed = await _record_batch(conn, durable, failed)
            except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                # The transaction is gone; if the connection broke during COMMIT it may even have committed,
                # so no file is removed: at worst an unindexed file stays, never a row without its file.
                outcome_unknown = not isinstance(exc, asyncpg.PostgresError)
                failed.extend((p, StorageError(f"could not index {p.stored.info.sop_instance_uid}: {exc}"))
                              for p in durable if not any(p is f for f, _ in failed))
                indexed = []
        if not outcome_unknown:
            await self._remove_failed(failed, {p.stored.key for p, _, _ in indexed})
        self.batches += 1
        self.flushed += len(batch)
        log.debug("group commit of %d instances: files %.1f ms, index %.1f ms", len(batch),
                  (files_done - started) * 1000, (time.perf_counter() - files_done) * 1000)
        # Copies the index no longer points at (a SOP instance sent again with other bytes) go first.
        # Keys name the SOP instance, so per instance every key but the one indexed last is garbage now.
        final: dict[str, str] = {}
        seen: dict[str, set[str]] = {}
        for p, _, previous_key in indexed:
            uid = p.stored.info.sop_instance_uid
            final[uid] = p.stored.key
            seen.setdefault(uid, set()).update(k for k in (previous_key, p.stored.key) if k)
        superseded = {k for uid, keys in seen.items() for k in keys if k != final[uid]}
        if superseded:
            await asyncio.to_thread(lambda: [self.storage.delete(k) for k in superseded])
        for p, exc in failed:
            if not p.future.done():
                p.future.set_exception(exc)
        for p, is_new, _ in indexed:
            if not p.future.done():
                p.future.set_result(is_new)

    async def _remove_failed(self, failed: list[tuple[_Pending, StorageError]], kept: set[str]) -> None:
        """Remove the files of refused instances, unless the same bytes are indexed (sent again meanwhile)."""
        keys = {p.stored.key for p, _ in failed if not p.stored.replaced} - kept
        if not keys:
            return
        try:
            async with self.pool.acquire() as conn:
                referenced = {r[0] for r in await conn.fetch(
                    "SELECT storage_key FROM imaging_instance WHERE storage_key = ANY($1::text[])", list(keys))}
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("refused instances' files kept (the index could not be asked: %s)", exc)
            return
        doomed = keys - referenced
        await asyncio.to_thread(lambda: [self.storage.delete(k) for k in doomed])


async def _record_batch(conn: asyncpg.Connection, durable: list[_Pending],
                        failed: list[tuple[_Pending, StorageError]]) -> list[tuple[_Pending, bool, str | None]]:
    """Index the batch: one statement when it goes through (the common case), else one savepoint per
    instance so that a refused one (a constraint, a SOP instance twice in the batch) fails alone."""
    try:
        rows = await conn.fetch(RECORD_BATCH, *_batch_arrays([p.stored for p in durable]))
    except asyncpg.PostgresError as exc:
        log.info("batch of %d not indexed at once (%s): one by one", len(durable), exc)
    else:
        found = {r["sop_instance_uid"]: (r["inserted"], r["previous_key"]) for r in rows}
        if len(found) == len(durable):
            return [(p, *found[p.stored.info.sop_instance_uid]) for p in durable]
        raise asyncpg.InterfaceError(f"batch index answered {len(found)} rows for {len(durable)}")  # not expected
    indexed = []
    async with conn.transaction():
        for p in durable:
            try:  # record_instance's own transaction is a savepoint inside this one
                is_new, previous_key = await store.record_instance(conn, p.stored.info, p.stored.key, p.stored.size)
            except asyncpg.PostgresError as exc:
                failed.append((p, StorageError(f"could not index {p.stored.info.sop_instance_uid}: {exc}")))
            else:
                indexed.append((p, is_new, previous_key))
    return indexed


# store.record_instance for many instances in one statement (so one round trip and one commit). The CTEs
# share a snapshot: a study inserted here is not seen by the UPDATE, so its insert sets what the UPDATE
# would (changed, receiving, last_received_at); the foreign keys are checked at the end of the statement.
RECORD_BATCH = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[],
                         $8::int[], $9::int[])
        AS t(sop_instance_uid, series_uid, study_uid, sop_class_uid, transfer_syntax_uid, storage_key, size,
             instance_number, number_of_frames)
), new_studies AS (
    INSERT INTO imaging_study (study_uid, patient_id, patient_issuer_oid, patient_issuer_ns, accession_number,
                               header, last_received_at)
    SELECT DISTINCT ON (study_uid) study_uid, patient_id, patient_issuer_oid, patient_issuer_ns, accession_number,
           header::jsonb, clock_timestamp()
    FROM unnest($3::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[])
        AS s(study_uid, patient_id, patient_issuer_oid, patient_issuer_ns, accession_number, header)
    ON CONFLICT (study_uid) DO NOTHING
    RETURNING study_uid
), new_series AS (
    INSERT INTO imaging_series (series_uid, study_uid, modality, body_part, anatomic_region, series_number,
                                series_description)
    SELECT DISTINCT ON (series_uid) * FROM unnest($2::text[], $3::text[], $15::text[], $16::text[], $17::text[],
                                                  $18::int[], $19::text[])
        AS r(series_uid, study_uid, modality, body_part, anatomic_region, series_number, series_description)
    ON CONFLICT (series_uid) DO NOTHING
    RETURNING series_uid
), previous AS (  -- the statement's snapshot: the rows before the upsert (FOR UPDATE would skip them)
    SELECT sop_instance_uid, storage_key FROM imaging_instance WHERE sop_instance_uid = ANY($1::text[])
), upserted AS (
    INSERT INTO imaging_instance (sop_instance_uid, series_uid, study_uid, sop_class_uid, transfer_syntax_uid,
                                  storage_key, size, instance_number, number_of_frames)
    SELECT * FROM input
    ON CONFLICT (sop_instance_uid) DO UPDATE SET series_uid = EXCLUDED.series_uid,
        study_uid = EXCLUDED.study_uid, sop_class_uid = EXCLUDED.sop_class_uid,
        transfer_syntax_uid = EXCLUDED.transfer_syntax_uid, storage_key = EXCLUDED.storage_key,
        size = EXCLUDED.size, instance_number = EXCLUDED.instance_number,
        number_of_frames = EXCLUDED.number_of_frames, received_at = now()
    RETURNING sop_instance_uid, study_uid, (xmax = 0) AS inserted
), changed_studies AS (
    UPDATE imaging_study SET changed = true, last_received_at = clock_timestamp(), state = 'receiving'
    WHERE study_uid IN (SELECT study_uid FROM upserted WHERE inserted)
      AND study_uid NOT IN (SELECT study_uid FROM new_studies)
    RETURNING 1
)
SELECT u.sop_instance_uid, u.inserted, p.storage_key AS previous_key
FROM upserted u LEFT JOIN previous p USING (sop_instance_uid)
"""


def _batch_arrays(batch: list[StoredInstance]) -> list[list]:
    """The columns of RECORD_BATCH's parameters, one list per parameter."""
    infos = [s.info for s in batch]
    return [
        [i.sop_instance_uid for i in infos], [i.series_uid for i in infos], [i.study_uid for i in infos],
        [i.sop_class_uid for i in infos], [i.transfer_syntax_uid for i in infos], [s.key for s in batch],
        [s.size for s in batch], [i.instance_number for i in infos], [i.number_of_frames for i in infos],
        [i.patient_id for i in infos], [i.patient_issuer_oid for i in infos], [i.patient_issuer_ns for i in infos],
        [i.accession_number for i in infos], [json.dumps(i.header) for i in infos],
        [i.modality for i in infos], [i.body_part for i in infos], [i.anatomic_region for i in infos],
        [i.series_number for i in infos], [i.series_description for i in infos],
    ]


def _fail_all(batch: list[_Pending], exc: StorageError) -> None:
    for p in batch:
        with contextlib.suppress(concurrent.futures.InvalidStateError, asyncio.InvalidStateError):
            if not p.future.done():
                p.future.set_exception(exc)
