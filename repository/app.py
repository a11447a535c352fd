"""Wiring of a repository process: storage, database, registry client and the SOAP endpoint.

The endpoint reads requests itself instead of using :class:`ihe.http.SoapService`, because
both directions stream: ITI-41 attachments go to staging files while they arrive (documents
of gigabytes, bounded memory) and ITI-43 answers are MTOM streamed from the blob files.
Envelope checks, WS-Addressing and faults are still those of :mod:`ihe.soap` / :mod:`ihe.http`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web

from consumer.client.soap import SoapClient
from ihe import tls
from ihe.audit.auditor import open_auditor
from ihe.audit.client import ClientAudit, install_xua_alerts
from ihe.audit.middleware import audit_middlewares
from ihe.database import create_pool
from ihe.http import SOAP_REQUEST, database_health, soap_response, unpack_soap_body
from ihe.mtom import (
    MTOMError,
    MTOMPackage,
    body_chunks,
    build_mtom,
    parse_content_type,
    read_mtom_stream,
    send_mtom_response,
)
from ihe.namespaces import (
    ACTION_ITI41,
    ACTION_ITI41_RESPONSE,
    ACTION_ITI43,
    ACTION_ITI43_RESPONSE,
    ACTION_ITI86,
    ACTION_ITI86_RESPONSE,
)
from ihe.soap import (
    FAULT_RECEIVER,
    FAULT_SENDER,
    WSA_ACTION_NOT_SUPPORTED,
    SoapFault,
    SoapRequest,
    build_envelope,
    build_fault,
    parse_envelope,
)
from ihe.xua import load_policy
from ihe.xua import web as xua
from repository import catalog
from repository.settings import RepositorySettings
from repository.storage import DocumentTooLarge, FileSystemStore
from schemas import migrate

log = logging.getLogger(__name__)

REPOSITORY_PATH = "/repository"
READ_BUFSIZE = 1024 * 1024  # per-connection buffer before reading pauses; 64 KiB halves loopback throughput


@dataclass(slots=True)
class Repository:
    """What every repository handler needs."""

    settings: RepositorySettings
    pool: asyncpg.Pool
    store: FileSystemStore
    soap_client: SoapClient
    in_flight: set[uuid.UUID] = field(default_factory=set)  # journal entries this process is working on
    owner: Any = None  # the connection holding the repositoryUniqueId lock
    auditor: Any = None  # ihe.audit.auditor.Auditor when --audit-repository is set
    policy: Any = None  # ihe.policy.client.PolicyClient when --access-policy-url is set


class RepositoryInUse(RuntimeError):
    pass


async def open_repository(settings: RepositorySettings, database_url: str) -> Repository:
    """Claim the repositoryUniqueId and the storage folder, apply migrations, connect."""
    owner = await catalog.claim_repository_id(database_url, settings.repository_unique_id)
    if owner is None:
        raise RepositoryInUse(f"repository {settings.repository_unique_id} is already served by another process")
    store = FileSystemStore(settings.storage_dir, max_document_bytes=settings.max_document_bytes,
                            durable=not settings.no_fsync)
    try:
        store.open()
        pool = await create_pool(database_url, min_size=1, max_size=settings.pool_size)
        async with pool.acquire() as conn:
            applied = await migrate(conn, "repository")
        if applied:
            log.info("applied repository migrations: %s", ", ".join(applied))
    except BaseException:
        store.close()
        await owner.close()
        raise
    client = SoapClient(timeout=settings.registry_timeout)
    policy = None
    if settings.access_policy_url:
        from ihe.policy.client import PolicyClient

        policy = PolicyClient(settings.access_policy_url, settings.repository_unique_id,
                              cache_seconds=settings.access_policy_cache)
    return Repository(settings=settings, pool=pool, store=store, soap_client=client, owner=owner, policy=policy)


async def close_repository(repo: Repository) -> None:
    await repo.soap_client.close()
    if repo.policy is not None:
        await repo.policy.close()
    await repo.pool.close()
    repo.store.close()
    if repo.owner is not None:
        await repo.owner.close()


class RepositoryEndpoint:
    """POST handler of ``/repository``: ITI-41, ITI-43 and ITI-86."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def _open_sink(self, content_id: str, headers: dict[str, str]) -> Any:
        return self.repo.store.new_upload(content_id=content_id, headers=headers)

    async def read_request(self, request: web.Request) -> tuple[SoapRequest, bool]:
        """The SOAP request with its attachments staged; and whether it came as MTOM."""
        s = self.repo.settings
        content_type = request.headers.get("Content-Type", "")
        media, _ = parse_content_type(content_type)
        if request.content_length is not None and request.content_length > s.max_request_bytes:
            raise SoapFault(FAULT_SENDER, f"request body of {request.content_length} bytes exceeds the limit of "
                            f"{s.max_request_bytes} bytes")
        attachments: dict[str, Any] = {}
        if media == "multipart/related":
            message = await read_mtom_stream(content_type, body_chunks(request.content), self._open_sink,
                                             max_root_bytes=s.max_xml_bytes, max_total_bytes=s.max_request_bytes)
            attachments = message.attachments
            try:
                root, _ = unpack_soap_body("application/soap+xml", message.root, s.max_xml_bytes)
                soap = parse_envelope(root)
                soap.identity = xua.enforce_soap(request, root, soap.action)
            except BaseException:
                message.discard()
                raise
        else:
            body = bytearray()
            async for chunk in request.content.iter_any():
                body += chunk
                if len(body) > s.max_xml_bytes:
                    raise SoapFault(FAULT_SENDER, f"SOAP request exceeds the limit of {s.max_xml_bytes} bytes; send "
                                    "large documents as MTOM attachments")
            root, _ = unpack_soap_body(content_type, bytes(body), s.max_xml_bytes)
            soap = parse_envelope(root)
            soap.identity = xua.enforce_soap(request, root, soap.action)
        soap.attachments = attachments
        soap.remote = request.remote
        soap.peer = tls.peer_certificate(request.transport)
        return soap, media == "multipart/related"

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        relates_to = None
        soap: SoapRequest | None = None
        answer: MTOMPackage | None = None
        try:
            soap, was_mtom = await self.read_request(request)
            request[SOAP_REQUEST] = soap  # for the audit middleware (ihe.audit.middleware)
            relates_to = soap.message_id
            if soap.action == ACTION_ITI41:
                from repository.provide_and_register import provide_and_register

                response = await provide_and_register(self.repo, soap)
                envelope = build_envelope(ACTION_ITI41_RESPONSE, response, relates_to=relates_to)
                if was_mtom:  # answer in kind: some MTOM clients insist on an MTOM response
                    package = build_mtom(envelope, action=ACTION_ITI41_RESPONSE)
                    return web.Response(body=package.to_bytes(), headers={"Content-Type": package.content_type})
                return soap_response(envelope, action=ACTION_ITI41_RESPONSE)
            if soap.action == ACTION_ITI43:
                from repository.retrieve import retrieve_document_set

                response, attachments = await retrieve_document_set(self.repo, soap)
                envelope = build_envelope(ACTION_ITI43_RESPONSE, response, relates_to=relates_to)
                answer = build_mtom(envelope, attachments, action=ACTION_ITI43_RESPONSE)
            elif soap.action == ACTION_ITI86:
                from repository.remove_documents import remove_documents

                response = await remove_documents(self.repo, soap)
                return soap_response(build_envelope(ACTION_ITI86_RESPONSE, response, relates_to=relates_to),
                                     action=ACTION_ITI86_RESPONSE)
            else:
                raise SoapFault(FAULT_SENDER, f"WS-Addressing Action {soap.action!r} is not supported at this "
                                f"endpoint; supported: {ACTION_ITI41}, {ACTION_ITI43}, {ACTION_ITI86}",
                                WSA_ACTION_NOT_SUPPORTED)
        except SoapFault as fault:
            return _fault(fault, relates_to)
        except MTOMError as exc:
            return _fault(SoapFault(FAULT_SENDER, f"malformed MTOM/XOP message: {exc}"), relates_to)
        except DocumentTooLarge as exc:
            return _fault(SoapFault(FAULT_SENDER, str(exc)), relates_to)
        except ConnectionResetError:  # the client went away mid-request: nothing to answer, nothing kept
            log.info("client disconnected during a request")
            return web.Response(status=400)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("storage full: %s", exc)
                return _fault(SoapFault(FAULT_RECEIVER, "XDSRepositoryOutOfResources: the repository's storage is "
                                        "full"), relates_to)
            log.exception("I/O error handling a SOAP request")
            return _fault(SoapFault(FAULT_RECEIVER, "internal error in the repository; see its log"), relates_to, 500)
        except Exception:
            log.exception("internal error handling a SOAP request")
            return _fault(SoapFault(FAULT_RECEIVER, "internal error in the repository; see its log"), relates_to, 500)
        finally:
            if soap is not None:
                for sink in soap.attachments.values():
                    sink.discard()
        # Once the answer has begun there is no fault to send: a failure breaks the connection,
        # so the consumer sees a truncated message, never a complete-looking wrong document.
        assert answer is not None  # every other path returned above
        try:
            return await send_mtom_response(request, answer)
        except OSError as exc:
            log.warning("ITI-43 answer interrupted: %s", exc)
            raise


def _fault(fault: SoapFault, relates_to: str | None, status: int | None = None) -> web.Response:
    return soap_response(build_fault(fault, relates_to=relates_to), status=status or fault.http_status)


def build_app(repo: Repository) -> web.Application:
    app = web.Application(middlewares=audit_middlewares(repo.auditor))
    xua.install(app, load_policy(repo.settings.xua, repo.settings.xua_trust))
    app.router.add_post(REPOSITORY_PATH, RepositoryEndpoint(repo))
    app.router.add_get(REPOSITORY_PATH, _info(repo))
    app.router.add_get("/health", database_health(repo.pool, repositoryUniqueId=repo.settings.repository_unique_id))
    return app


def _info(repo: Repository):
    async def info(request: web.Request) -> web.Response:
        return web.Response(text=f"XDS.b Document Repository {repo.settings.repository_unique_id}: POST SOAP 1.2 "
                                 "ITI-41 (MTOM or inline), ITI-43 and ITI-86 here\n")

    return info


async def serve(settings: RepositorySettings, database_url: str, ready: asyncio.Event | None = None) -> None:
    """Run the repository until cancelled."""
    from repository.recovery import recovery_loop

    repo = await open_repository(settings, database_url)
    repo.auditor = open_auditor(settings, "xds-repository")
    endpoint = f"http://{settings.host}:{settings.port}{REPOSITORY_PATH}"
    remove_alerts = install_xua_alerts(repo.auditor, endpoint)
    if repo.auditor is not None:  # the repository's own record of the ITI-42 it sends (Document Source side)
        repo.soap_client.on_exchange = ClientAudit(repo.auditor, endpoint)
    runner = web.AppRunner(build_app(repo), access_log=None, read_bufsize=READ_BUFSIZE)
    await runner.setup()
    site = tls.site(runner, settings.host, settings.port, tls.node())
    recovery = asyncio.create_task(recovery_loop(repo, settings.recovery_interval))
    try:
        await site.start()
        print(f"repository {settings.repository_unique_id}: ITI-41/ITI-43 at "
              f"{tls.scheme()}://{settings.host}:{settings.port}{REPOSITORY_PATH}; documents in {repo.store.root}",
              flush=True)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        recovery.cancel()
        await runner.cleanup()
        await close_repository(repo)
        remove_alerts()
        if repo.auditor is not None:
            repo.auditor.close()
