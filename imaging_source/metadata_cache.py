"""WADO-RS metadata (DICOM JSON) of each stored instance, computed once and kept in the index.

pydicom's ``Dataset.to_json_dict`` costs 10 to 30 ms an instance (more with many private tags), so a
500-image CT series took seconds (tens of seconds on a loaded machine) for every viewer that opened it,
before the first frame could even be asked for. The JSON of a stored file depends only on its bytes, which
the storage key names (content-versioned), so it is kept in ``imaging_instance.metadata_json`` and reset
whenever the key changes (store.record_instance). The tracker computes it as soon as a study is complete
(:func:`warm_soon`), so the first viewer does not wait either; a request finding some missing computes
and keeps them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

import asyncpg
import pydicom

from imaging_source import store
from imaging_source.context import ImagingSource
from imaging_source.storage import Storage, StorageError

log = logging.getLogger(__name__)

# Everything but the pixel data travels inline (InlineBinary): there is no separate bulk data resource.
BULK_THRESHOLD = 1 << 30
NON_IMAGE_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.5.1.4.1.1.104.1"})
WARM_BATCH = 50  # instances computed per thread hop while warming (the event loop keeps running between)
_warming: set[asyncio.Task] = set()  # references to the background tasks, so they are not collected


def file_json(storage: Storage, key: str) -> str:
    """The DICOM JSON object of the stored file under ``key``, without its pixel data."""
    with storage.open(key) as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
    return json.dumps(ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD))


def instance_url(base: str, row) -> str:
    return f"{base}/studies/{row['study_uid']}/series/{row['series_uid']}/instances/{row['sop_instance_uid']}"


def item_json(cached: str, row, base: str) -> str:
    """``cached`` (the file's DICOM JSON object) with what the index and the request add: the transfer
    syntax as stored and, for images, the pixel data as a BulkDataURI naming its frames resource."""
    extra: dict = {"00020010": {"vr": "UI", "Value": [row["transfer_syntax_uid"]]}}
    if row["modality"] != "SR" and row["sop_class_uid"] not in NON_IMAGE_CLASSES:
        frames = ",".join(str(n) for n in range(1, (row["number_of_frames"] or 1) + 1))
        extra["7FE00010"] = {"vr": "OW", "BulkDataURI": f"{instance_url(base, row)}/frames/{frames}"}
    head = cached.rstrip()[:-1].rstrip()  # the object without its closing brace
    return head + ("" if head == "{" else ", ") + json.dumps(extra)[1:]


async def known(conn: asyncpg.Connection, rows: Sequence) -> dict[str, str]:
    """The kept JSON of ``rows`` by storage key (only where it is still the row's current file)."""
    found = await conn.fetch(
        "SELECT storage_key, metadata_json FROM imaging_instance WHERE sop_instance_uid = ANY($1::text[])"
        " AND metadata_json IS NOT NULL", [r["sop_instance_uid"] for r in rows])
    return {r["storage_key"]: r["metadata_json"] for r in found}


async def keep(conn: asyncpg.Connection, computed: list[tuple[str, str, str]]) -> None:
    """Keep (sop_instance_uid, storage_key, json) triples, unless the instance has another file meanwhile."""
    if computed:
        await conn.execute(
            "UPDATE imaging_instance i SET metadata_json = u.j FROM unnest($1::text[], $2::text[], $3::text[])"
            " AS u(s, k, j) WHERE i.sop_instance_uid = u.s AND i.storage_key = u.k",
            [c[0] for c in computed], [c[1] for c in computed], [c[2] for c in computed])


def _compute(storage: Storage, rows: Sequence) -> list[tuple[str, str, str]]:
    return [(r["sop_instance_uid"], r["storage_key"], file_json(storage, r["storage_key"])) for r in rows]


async def metadata_body(source: ImagingSource, rows: Sequence, base: str) -> bytes:
    """The WADO-RS metadata response (a JSON array) of ``rows``; computes and keeps what is missing.

    Raises StorageError or OSError when a stored file cannot be read."""
    async with source.pool.acquire() as conn:
        have = await known(conn, rows)
    missing = [r for r in rows if r["storage_key"] not in have]
    if missing:
        computed = await asyncio.to_thread(_compute, source.storage, missing)
        have.update((key, text) for _, key, text in computed)
        try:
            async with source.pool.acquire() as conn:
                await keep(conn, computed)
        except (OSError, asyncpg.PostgresError) as exc:  # the answer is right anyway; the next one recomputes
            log.warning("could not keep the metadata of %d instances: %s", len(computed), exc)
    return ("[" + ", ".join(item_json(have[r["storage_key"]], r, base) for r in rows) + "]").encode()


async def warm(source: ImagingSource, study_uid: str) -> int:
    """Compute and keep the metadata a study's instances lack; how many were computed."""
    async with source.pool.acquire() as conn:
        rows = await store.instances_of(conn, study_uid)
        have = await known(conn, rows)
    missing = [r for r in rows if r["storage_key"] not in have]
    for start in range(0, len(missing), WARM_BATCH):
        computed = await asyncio.to_thread(_compute, source.storage, missing[start:start + WARM_BATCH])
        async with source.pool.acquire() as conn:
            await keep(conn, computed)
    return len(missing)


def warm_soon(source: ImagingSource, study_uid: str) -> None:
    """:func:`warm` in the background; a failure is logged (a request computes what is still missing)."""
    async def run() -> None:
        try:
            count = await warm(source, study_uid)
        except (StorageError, OSError, asyncpg.PostgresError, ValueError) as exc:
            log.warning("study %s: metadata not precomputed: %s", study_uid, exc)
            return
        if count:
            log.info("study %s: WADO-RS metadata of %d instances precomputed", study_uid, count)

    task = asyncio.get_running_loop().create_task(run())
    _warming.add(task)
    task.add_done_callback(_warming.discard)
