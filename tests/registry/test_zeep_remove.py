"""A client no one here wrote: zeep sends ITI-62 Delete Document Set built from the registry's WSDL."""

import pytest
from zeep import Client, Settings
from zeep.wsa import WsAddressingPlugin

from ihe.metadata.model import Identifiable
from registry.patients import Demographics, record_patient
from tests.messages import new_patient_id, new_uuid, register_request
from tests.registry.test_zeep_client import post

SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"


@pytest.fixture
async def patient(registry_pool):
    pid = new_patient_id()
    async with registry_pool.acquire() as conn:
        await record_patient(conn, [Identifiable.parse_cx(pid)], Demographics("Doe", "Jane"))
    return pid


def delete(client: Client, ids: list[str]):
    return client.service.DocumentRegistry_DeleteDocumentSet(ObjectRefList={"ObjectRef": [{"id": i} for i in ids]})


async def test_zeep_removes_a_submission_and_sees_the_errors(registry_process, registry_pool, patient):
    client = Client(f"{registry_process.url}?wsdl", plugins=[WsAddressingPlugin()], settings=Settings(strict=False))
    envelope, built = register_request(patient, use_uuids=True, documents=2)
    assert SUCCESS.encode() in post(registry_process.url, envelope)
    everything = [built.submission_set_id, *built.document_ids, *built.associations]

    refused = delete(client, [built.submission_set_id, new_uuid()])
    assert refused.status == FAILURE
    assert sorted(e.errorCode for e in refused.RegistryErrorList.RegistryError) == [
        "ReferencesExistException", "ReferencesExistException", "UnresolvedReferenceException"]
    async with registry_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM document_entry") == 2

    done = delete(client, everything)
    assert done.status == SUCCESS and done.RegistryErrorList is None
    async with registry_pool.acquire() as conn:
        assert [await conn.fetchval(f"SELECT count(*) FROM {t}") for t in
                ("document_entry", "submission_set", "association", "unique_id_claim")] == [0, 0, 0, 0]
