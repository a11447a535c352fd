"""Extra Storage SCP processes sharing the DICOM port (``--dicom-workers``).

pynetdicom decodes PDUs and runs each association in Python threads, so one process spends its
GIL on a few associations at a time. Worker processes bind the same port with SO_REUSEPORT
(the kernel spreads new associations over them), each with its own database pool and group-commit
writer; the main process keeps HTTP, the tracker and the migrations. A worker stops when the main
process is gone, so a killed service never leaves a process holding its port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
from multiprocessing.process import BaseProcess

from ihe import tls
from ihe.database import create_pool
from imaging_source.settings import ImagingSourceSettings
from imaging_source.storage import FileStorage

log = logging.getLogger(__name__)


def scp_config(settings: ImagingSourceSettings):  # -> StorageSCPConfig (imported late: pynetdicom is heavy)
    from imaging_source.storage_scp import StorageSCPConfig

    return StorageSCPConfig(settings.ae_title, settings.dicom_host, settings.dicom_port,
                            settings.patient_id_issuer_oid, settings.patient_id_issuer_namespace)


def start_workers(settings: ImagingSourceSettings, database_url: str) -> list[BaseProcess]:
    """Start ``dicom_workers - 1`` processes next to this one (which must bind with ``shared_port``)."""
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(settings, database_url, os.getpid()), daemon=True,
                               name=f"dicom-worker-{n}") for n in range(1, settings.dicom_workers)]
    for w in workers:
        w.start()
    return workers


def stop_workers(workers: list[BaseProcess]) -> None:
    for w in workers:
        w.terminate()
    for w in workers:
        w.join(10)


def _worker(settings: ImagingSourceSettings, database_url: str, parent: int) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
    tls.configure(settings)  # checked by the main process already
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings, database_url, parent))


async def _serve(settings: ImagingSourceSettings, database_url: str, parent: int) -> None:
    from imaging_source.storage_scp import start_storage_scp

    pool = await create_pool(database_url, min_size=1, max_size=max(2, settings.pool_size // 2))
    scp = start_storage_scp(FileStorage(settings.storage_dir), pool, asyncio.get_running_loop(),
                            scp_config(settings), shared_port=True)
    try:
        while os.getppid() == parent:
            await asyncio.sleep(1)
        log.warning("the imaging source's main process is gone: DICOM worker %d stops", os.getpid())
    finally:
        await asyncio.to_thread(scp.shutdown)
        await pool.close()
