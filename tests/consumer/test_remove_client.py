"""``consumer.client.remove`` against the real registry: what a document's removal must name."""

from __future__ import annotations

import aiohttp

from consumer.client import SoapClient
from consumer.client.query import get_documents
from consumer.client.remove import document_removal_set, remove_metadata
from tests.messages import register_request
from tests.repository.conftest import new_patient

SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"


async def test_a_document_in_a_folder_goes_with_every_association_naming_it(network):
    registry = network.registry
    pid = await new_patient(network.database_url)
    envelope, built = register_request(pid, use_uuids=True, documents=2, folder=True)
    async with aiohttp.ClientSession() as session, session.post(
            registry.url, data=envelope, headers={"Content-Type": "application/soap+xml"}) as resp:
        assert SUCCESS in await resp.text()
    gone, kept = built.document_ids
    folder_member = next(a for a, (_, s, t) in built.associations.items() if (s, t) == (built.folder_id, gone))
    expected = {gone, folder_member,
                *(a for a, (_, _, t) in built.associations.items() if t in (gone, folder_member))}

    async with SoapClient() as client:
        ids, missing = await document_removal_set(client, registry.url, [built.document_unique_ids[0], "1.2.3.404"])
        assert (set(ids), missing) == (expected, ["1.2.3.404"]) and len(ids) == 4
        result = await remove_metadata(client, registry.url, ids)
        assert result.ok, result.errors
        assert await get_documents(client, registry.url, [built.document_unique_ids[0]]) == []
        assert [e.entry_uuid for e in await get_documents(client, registry.url, [built.document_unique_ids[1]])] \
            == [kept]
