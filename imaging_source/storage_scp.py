"""DICOM Storage SCP (C-ECHO, C-STORE for every storage SOP class and the common transfer syntaxes).

pynetdicom runs each association in its own thread: the object is checked and its file written
there, then the group-commit writer (imaging_source.group_commit, on the service's event loop)
makes it durable and indexes it together with the instances of every other association; the
success status goes back only after both. Any failure answers a DICOM failure status and leaves
neither file nor row behind.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from ihe import tls
from imaging_source.group_commit import GroupCommitWriter
from imaging_source.ingest import RejectedInstance, StoredInstance, prepare
from imaging_source.storage import FileStorage

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
INDEX_TIMEOUT = 60.0


@dataclass(slots=True)
class StorageSCPConfig:
    ae_title: str
    host: str
    port: int
    issuer_oid: str | None = None
    issuer_ns: str | None = None
    max_pdu: int = 1 << 20


def make_store_handler(storage: FileStorage, pool: asyncpg.Pool, loop: asyncio.AbstractEventLoop,
                       config: StorageSCPConfig,
                       on_stored: Callable[[StoredInstance, bool], None] | None = None,
                       writer: GroupCommitWriter | None = None) -> Callable[..., int]:
    """The EVT_C_STORE handler: returns the status for the C-STORE response.

    It checks the object and stages its file here, in the association's thread, then waits while
    the group-commit writer makes it durable and indexes it together with whatever else arrived.
    """
    if writer is None:
        writer = GroupCommitWriter(storage, pool, loop)
        writer.start()

    def handle_store(event: evt.Event) -> int:
        request = event.request
        try:
            data = event.encoded_dataset(include_meta=True)
            info, key = prepare(data, issuer_oid=config.issuer_oid, issuer_ns=config.issuer_ns)
        except RejectedInstance as exc:
            log.warning("C-STORE of %s refused: %s", request.AffectedSOPInstanceUID, exc.reason)
            return exc.status
        except Exception:
            log.exception("C-STORE of %s failed", request.AffectedSOPInstanceUID)
            return STATUS_CANNOT_UNDERSTAND
        mismatch = None
        if request.AffectedSOPInstanceUID and str(request.AffectedSOPInstanceUID) != info.sop_instance_uid:
            mismatch = "Affected SOP Instance UID differs from the dataset's SOP Instance UID"
        elif request.AffectedSOPClassUID and str(request.AffectedSOPClassUID) != info.sop_class_uid:
            mismatch = "Affected SOP Class UID differs from the dataset's SOP Class UID"
        if mismatch:
            log.warning("C-STORE of %s refused: %s", request.AffectedSOPInstanceUID, mismatch)
            return STATUS_DATASET_MISMATCH
        try:
            replaced = storage.exists(key)
            staged = None if replaced else storage.stage(key, data)
            stored = StoredInstance(info, key, len(data), replaced)
            try:
                future = writer.submit(stored, staged)
            except RuntimeError:  # the service's loop is closing: the writer will not see this one
                if staged is not None:
                    storage.discard(staged)
                raise
            # After a timeout the writer may still keep the instance: the sender, told it failed, sends it again.
            is_new = future.result(INDEX_TIMEOUT)
        except Exception as exc:
            log.error("C-STORE of %s failed: %s", info.sop_instance_uid, exc)
            return STATUS_OUT_OF_RESOURCES
        if on_stored is not None:
            on_stored(stored, is_new)
        return STATUS_SUCCESS

    return handle_store


def build_ae(config: StorageSCPConfig) -> AE:
    ae = AE(ae_title=config.ae_title)
    ae.maximum_pdu_size = config.max_pdu
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.require_called_aet = False
    # Large studies arrive over long associations: do not cut them off while the index works.
    ae.dimse_timeout = 120
    ae.network_timeout = 120
    return ae


class _SharedPortServer(ThreadedAssociationServer):
    """Binds with SO_REUSEPORT, so that several processes listen on one port and the kernel spreads the
    associations over them (see imaging_source.scp_workers)."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def start_storage_scp(storage: FileStorage, pool: asyncpg.Pool, loop: asyncio.AbstractEventLoop,
                      config: StorageSCPConfig,
                      on_stored: Callable[[StoredInstance, bool], None] | None = None,
                      shared_port: bool = False) -> ThreadedAssociationServer:
    """Start listening (in background threads); stop with ``server.shutdown()``."""
    ae = build_ae(config)
    writer = GroupCommitWriter(storage, pool, loop)
    writer.start()
    handlers = [(evt.EVT_C_STORE, make_store_handler(storage, pool, loop, config, on_stored, writer))]
    node_tls = tls.node()
    if not shared_port and node_tls is None:
        server = ae.start_server((config.host, config.port), block=False, evt_handlers=handlers)
        assert server is not None
        return server
    # DICOM over TLS (ITI-19): the handshake in each association's thread (ihe.tls.socketserver_class)
    server_class = tls.socketserver_class(_SharedPortServer if shared_port else ThreadedAssociationServer,
                                          node_tls, log, f"DICOM {config.ae_title}")
    server = ae.make_server((config.host, config.port), evt_handlers=handlers, server_class=server_class)
    threading.Thread(target=server.serve_forever, name=f"AcceptorServer:{config.port}", daemon=True).start()
    return server
