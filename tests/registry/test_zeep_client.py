"""A client no one here wrote: zeep builds ITI-18 requests from the registry's own WSDL.

The patient arrives by HL7 v2 A01 over MLLP and the documents by a NIST-shaped ITI-42 over
HTTP; zeep then queries the running registry process.
"""

import socket
import urllib.request

import pytest
from lxml import etree
from zeep import Client, Settings
from zeep.wsa import WsAddressingPlugin

from tests.messages import FIND_DOCUMENTS, TEST_AUTHORITY_OID, new_patient_id, register_request
from tests.update_messages import DEPRECATED, status_change

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"


def send_a01(port: int, patient_cx: str) -> str:
    """Send an ADT^A01 by MLLP with a raw socket; return the ACK text."""
    pid = patient_cx.split("^")[0]
    msg = "\r".join([
        "MSH|^~\\&|PAS|LEEDS|XDSREG|REGION|20261123120000||ADT^A01^ADT_A01|MSG0001|P|2.5",
        "EVN|A01|20261123120000",
        f"PID|||{pid}^^^NHS&{TEST_AUTHORITY_OID}&ISO~RR8123456^^^LTH&1.2.826.0.1.285.0.2.0.1.2&ISO||Doe^Jane||19650101|F",
        "PV1||I",
    ]) + "\r"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x0b" + msg.encode() + b"\x1c\x0d")
        data = b""
        while not data.endswith(b"\x1c\x0d"):
            chunk = s.recv(4096)
            assert chunk, "registry closed the MLLP connection without an ACK"
            data += chunk
    return data.strip(b"\x0b\x1c\x0d").decode()


def post(url: str, body: bytes) -> bytes:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/soap+xml; charset=UTF-8"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


@pytest.fixture
def zeep_registry(registry_process):
    client = Client(f"{registry_process.url}?wsdl", plugins=[WsAddressingPlugin()],
                    settings=Settings(strict=False, xml_huge_tree=False))
    return client, registry_process


def find_documents(client: Client, params: dict[str, list[str]]):
    slots = [{"name": name, "ValueList": {"Value": values}} for name, values in params.items()]
    return client.service.DocumentRegistry_RegistryStoredQuery(
        ResponseOption={"returnType": "LeafClass", "returnComposedObjects": True},
        AdhocQuery={"id": FIND_DOCUMENTS, "Slot": slots},
    )


def test_zeep_finds_documents_registered_for_a_fed_patient(zeep_registry):
    client, registry = zeep_registry
    patient = new_patient_id()
    ack = send_a01(registry.mllp_port, patient)
    assert "MSA|AA|MSG0001" in ack
    envelope, built = register_request(patient, documents=3)
    assert SUCCESS.encode() in post(registry.url, envelope)

    response = find_documents(client, {"$XDSDocumentEntryPatientId": [f"'{patient}'"],
                                       "$XDSDocumentEntryStatus": [f"('{APPROVED}')"]})
    assert response.status == SUCCESS
    objects = response.RegistryObjectList._value_1
    entries = [o for o in objects if etree.QName(o).localname == "ExtrinsicObject"]
    unique_ids = {
        e.find(f"{{{RIM}}}ExternalIdentifier[@identificationScheme="
               "'urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab']").get("value")
        for e in entries
    }
    assert unique_ids == set(built.document_unique_ids)


def test_zeep_sees_the_registry_error_for_a_missing_parameter(zeep_registry):
    client, _ = zeep_registry
    response = find_documents(client, {"$XDSDocumentEntryStatus": [f"('{APPROVED}')"]})
    assert response.status == FAILURE
    codes = [e.errorCode for e in response.RegistryErrorList.RegistryError]
    assert codes == ["XDSStoredQueryMissingParam"]
    assert "XDSDocumentEntryPatientId" in response.RegistryErrorList.RegistryError[0].codeContext


def test_zeep_deprecates_a_document_with_update_document_set(zeep_registry):
    """ITI-57 from the WSDL's UpdateDocumentSet operation: zeep sends the status change it was given."""
    client, registry = zeep_registry
    patient = new_patient_id()
    assert "MSA|AA" in send_a01(registry.mllp_port, patient)
    envelope, _ = register_request(patient)
    assert SUCCESS.encode() in post(registry.url, envelope)
    [entry] = [o for o in find_documents(client, {"$XDSDocumentEntryPatientId": [f"'{patient}'"],
                                                  "$XDSDocumentEntryStatus": [f"('{APPROVED}')"]}
                                         ).RegistryObjectList._value_1
               if etree.QName(o).localname == "ExtrinsicObject"]
    update = etree.fromstring(status_change(patient, entry.get("id"), APPROVED, DEPRECATED))
    objects = update.find(".//{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}RegistryObjectList")
    response = client.service.DocumentRegistry_UpdateDocumentSet(RegistryObjectList={"_value_1": list(objects)})
    assert response.status == SUCCESS
    after = find_documents(client, {"$XDSDocumentEntryPatientId": [f"'{patient}'"],
                                    "$XDSDocumentEntryStatus": [f"('{DEPRECATED}')"]})
    assert [o.get("id") for o in after.RegistryObjectList._value_1
            if etree.QName(o).localname == "ExtrinsicObject"] == [entry.get("id")]
