"""Settle journal entries left by a crash or by an ITI-42 call whose outcome is unknown.

The registry is the authority: a journaled document is kept if the registry holds a
DocumentEntry with its uniqueId, our repositoryUniqueId and its hash (GetDocuments, ITI-18),
and removed otherwise. While the registry cannot be asked, entries wait for the next round.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from consumer.client.query import QueryFailed, get_documents
from consumer.client.soap import SoapFaultError, TransportError
from repository import catalog

if TYPE_CHECKING:
    from repository.app import Repository

log = logging.getLogger(__name__)


async def settle_pending(repo: Repository) -> tuple[int, int]:
    """One round over this repository's journal; returns (settled, still pending)."""
    repo_id = repo.settings.repository_unique_id
    settled = waiting = 0
    for pending in await catalog.pending_submissions(repo.pool, repo_id):
        if pending.id in repo.in_flight:
            continue
        unique_ids = sorted({d.unique_id for d in pending.documents})
        try:
            entries = await get_documents(repo.soap_client, repo.settings.registry_url, unique_ids) \
                if unique_ids else []
        except (TransportError, SoapFaultError, QueryFailed) as exc:
            log.warning("cannot settle submission %s yet: the registry did not answer GetDocuments: %s",
                        pending.id, exc)
            waiting += 1
            continue
        registered = {
            (e.unique_id, (e.hash or "").lower())
            for e in entries
            if e.repository_unique_id == repo_id
        }
        keep = [d for d in pending.documents if (d.unique_id, d.sha1) in registered]
        drop = [d for d in pending.documents if (d.unique_id, d.sha1) not in registered]
        missing = [d.unique_id for d in keep if not repo.store.exists(d.key)]
        if missing:
            log.error("registered documents %s of submission %s have no content in the store", missing, pending.id)
        await catalog.settle_submission(repo.pool, repo.store, repo_id, pending.id, keep=keep, drop=drop)
        log.info("settled submission %s: kept %d registered document(s), removed %d", pending.id, len(keep), len(drop))
        settled += 1
    return settled, waiting


async def recovery_loop(repo: Repository, interval: float) -> None:
    """Run :func:`settle_pending` now and then every ``interval`` seconds, until cancelled."""
    while True:
        try:
            await settle_pending(repo)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recovery round failed")
        try:  # blobs of documents removed (ITI-86) whose files a crash or an I/O error left behind
            await catalog.release_blobs(repo.pool, repo.store, repo.settings.repository_unique_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("releasing removed documents' blobs failed")
        await asyncio.sleep(interval)
