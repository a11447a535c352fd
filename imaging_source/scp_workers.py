"""Extra Storage SCP processes sharing the DICOM port (``--dicom-workers``).

One Python process receives, hashes and stages on one core (the DICOM upper layer and the
handler are CPU work in the event loop's thread). Worker processes bind the same port with SO_REUSEPORT
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
from ihe.audit.auditor import open_auditor
from ihe.audit.middleware import DicomAudit
from ihe.database import create_pool
from ihe.eventloop import run
from imaging_source.settings import ImagingSourceSettings
from imaging_source.storage import FileStorage

log = logging.getLogger(__name__)


def scp_config(settings: ImagingSourceSettings):  # -> StorageSCPConfig (imported late: pynetdicom is heavy)
    from imaging_source.storage_scp import StorageSCPConfig

    return StorageSCPConfig(settings.ae_title, settings.dicom_host, settings.dicom_port,
                            settings.patient_id_issuer_oid, settings.patient_id_issuer_namespace,
                            max_associations=settings.dicom_max_associations)


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
    tls.configure(settings)  # checked by the main process already
    with contextlib.suppress(KeyboardInterrupt):
        run(_serve(settings, database_url, parent))


async def _serve(settings: ImagingSourceSettings, database_url: str, parent: int) -> None:
    from imaging_source.storage_scp import start_storage_scp

    pool = await create_pool(database_url, min_size=1, max_size=max(2, settings.pool_size // 2))
    auditor = open_auditor(settings, "xds-imaging-source")  # a spool folder of its own (Spool.open_slot)
    audit = DicomAudit(auditor, settings.ae_title, settings.dicom_host) if auditor is not None else None
    scp = await start_storage_scp(FileStorage(settings.storage_dir), pool, scp_config(settings), audit=audit,
                                  shared_port=True, node_tls=tls.node())
    try:
        while os.getppid() == parent:
            await asyncio.sleep(1)
        log.warning("the imaging source's main process is gone: DICOM worker %d stops", os.getpid())
    finally:
        await scp.stop()
        await pool.close()
        if auditor is not None:
            auditor.close()
