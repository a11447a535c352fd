"""consumer.client.update (ITI-57 status changes) against a real registry process."""

from __future__ import annotations

from consumer.client.query import APPROVED, find_documents
from consumer.client.soap import SoapClient
from consumer.client.update import DEPRECATED, approve, deprecate
from ihe.errors import STATUS_SUCCESS, parse_registry_response
from ihe.metadata.model import Identifiable
from ihe.xml import parse_xml
from registry.patients import Demographics, record_patient
from tests import messages as m


async def test_deprecate_then_approve_a_document(registry_process, registry_pool):
    pid = m.new_patient_id()
    async with registry_pool.acquire() as conn:
        await record_patient(conn, [Identifiable.parse_cx(pid)], Demographics("Client", "Update"))
    envelope, _ = m.register_request(pid)
    async with SoapClient() as client:
        async with client.session.post(registry_process.url, data=envelope,
                                       headers={"Content-Type": "application/soap+xml; charset=UTF-8"}) as resp:
            body = parse_xml(await resp.read())
        assert parse_registry_response(body[-1][0])[0] == STATUS_SUCCESS
        [entry] = await find_documents(client, registry_process.url, pid)

        result = await deprecate(client, registry_process.url, pid, entry.entry_uuid, source_id=m.TEST_SOURCE_ID)
        assert result.ok, result.errors
        assert await find_documents(client, registry_process.url, pid) == []
        [deprecated] = await find_documents(client, registry_process.url, pid, statuses=[DEPRECATED])
        assert deprecated.entry_uuid == entry.entry_uuid

        again = await deprecate(client, registry_process.url, pid, entry.entry_uuid, source_id=m.TEST_SOURCE_ID)
        assert not again.ok and [e.code for e in again.errors] == ["XDSMetadataUpdateError"]

        result = await approve(client, registry_process.url, pid, entry.entry_uuid, source_id=m.TEST_SOURCE_ID)
        assert result.ok, result.errors
        [approved] = await find_documents(client, registry_process.url, pid, statuses=[APPROVED])
        assert approved.entry_uuid == entry.entry_uuid
