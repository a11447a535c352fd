"""The tests' call shape for RAD-69 over the consumer's client (:mod:`consumer.client.imaging`)."""

from __future__ import annotations

from consumer.client.imaging import InstanceRequest, retrieve_imaging_document_set


async def rad69(client, url: str, documents, syntaxes) -> tuple[str, list, dict[str, bytes]]:
    """(status, errors, {SOP instance uid: bytes}) of a RAD-69 call; documents are (study, series, repository
    unique id, SOP instance uid)."""
    requests = [InstanceRequest(study, series, sop, location) for study, series, location, sop in documents]
    result = await retrieve_imaging_document_set(client, url, requests, list(syntaxes))
    return result.status, result.errors, result.instances
