"""XUA at a repository started with ``--xua required``: its own streaming reader enforces the policy
for ITI-41 and ITI-43; a refused MTOM submission keeps nothing (no blob, no staging file, no journal)."""

from __future__ import annotations

import aiohttp
import pytest

from consumer.client import DocumentRequest, SoapClient, retrieve_document_set
from consumer.client.soap import SoapFaultError
from ihe.mtom import parse_content_type, unpack_mtom_bytes
from ihe.soap import parse_fault
from ihe.xml import parse_xml
from ihe.xua.assertion import build_assertion, security_header
from tests.conftest import start_registry_process
from tests.messages import provide_and_register_request
from tests.repository.conftest import (
    blobs,
    journal_and_documents,
    new_patient,
    staging_files,
    start_repository_process,
)
from tests.repository.wire import WireMessage, mtom_request
from tests.xua_keys import AUDIENCE, CLINICIAN, PORTAL_ISSUER, make_signer, write_trust_file

SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"


@pytest.fixture(scope="module")
def portal():
    return make_signer(PORTAL_ISSUER, "portal")


@pytest.fixture(scope="module")
def xua_network(registry_database_url, tmp_path_factory, portal):
    tmp = tmp_path_factory.mktemp("xua-repository")
    registry = start_registry_process(registry_database_url)
    try:
        repository = start_repository_process(registry_database_url, registry.url, tmp / "storage",
                                              extra=("--xua", "required", "--xua-trust",
                                                     str(write_trust_file(tmp, [portal]))))
    except Exception:
        registry.stop()
        raise
    yield registry, repository
    repository.stop()
    registry.stop()


class XuaSoapClient(SoapClient):
    """A consumer that sends an assertion with every call (as the portal does)."""

    def __init__(self, security: bytes) -> None:
        super().__init__()
        self.security = security

    async def call(self, *args, **kwargs):
        return await super().call(*args, security=self.security, **kwargs)


def with_security(message: WireMessage, security: bytes) -> WireMessage:
    assert message.body.count(b"</soapenv:Header>") == 1
    return WireMessage(message.content_type, message.body.replace(b"</soapenv:Header>",
                                                                  security + b"</soapenv:Header>"))


async def post(url: str, message: WireMessage):
    async with aiohttp.ClientSession() as session, session.post(
            url, data=message.body, headers={"Content-Type": message.content_type}) as response:
        body, content_type = await response.read(), response.headers.get("Content-Type", "")
    if parse_content_type(content_type)[0] == "multipart/related":  # ITI-41 by MTOM is answered in kind
        body, _ = unpack_mtom_bytes(content_type, body)
    return response.status, parse_xml(body)


async def test_repository_with_xua_required(xua_network, portal, registry_database_url):
    _registry, repo = xua_network
    pid = await new_patient(registry_database_url)
    content = b"a report for a clinician with an assertion\n"
    built = provide_and_register_request(pid, contents=[content])
    message = mtom_request(built)
    before = await journal_and_documents(registry_database_url, repo.repository_unique_id)

    status, envelope = await post(repo.url, message)
    fault = parse_fault(envelope)
    assert status == 400 and fault is not None and fault.subcode == "wsse:InvalidSecurity"
    assert blobs(repo.storage_dir) == set() and staging_files(repo.storage_dir) == []
    assert await journal_and_documents(registry_database_url, repo.repository_unique_id) == before

    valid = security_header(build_assertion(CLINICIAN, portal, audience=AUDIENCE))
    status, envelope = await post(repo.url, with_security(message, valid))
    response = envelope[-1][0]
    assert status == 200 and response.get("status") == SUCCESS

    request = [DocumentRequest(repo.repository_unique_id, built.document_unique_ids[0])]
    async with SoapClient() as anonymous:
        with pytest.raises(SoapFaultError) as info:
            await retrieve_document_set(anonymous, repo.url, request)
    assert info.value.fault.subcode == "wsse:InvalidSecurity" and "wsse:Security" in info.value.fault.reason
    async with XuaSoapClient(valid) as client:
        result = await retrieve_document_set(client, repo.url, request)
    assert result.ok and [d.data for d in result.documents] == [content]
