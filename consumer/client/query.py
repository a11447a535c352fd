"""ITI-18 Registry Stored Query, client side (the queries other clients need so far)."""

from __future__ import annotations

from collections.abc import Sequence

from lxml import etree

from consumer.client.soap import SoapClient
from ihe.errors import STATUS_FAILURE, RegistryError, parse_registry_response
from ihe.metadata.ebrim import read_registry_objects
from ihe.metadata.model import DocumentEntry
from ihe.namespaces import ACTION_ITI18, QUERY, RIM, qn

GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"


class QueryFailed(Exception):
    def __init__(self, errors: list[RegistryError]) -> None:
        super().__init__("; ".join(f"{e.code}: {e.context}" for e in errors) or "stored query failed")
        self.errors = errors


def quoted_list(values: Sequence[str]) -> str:
    """A stored query list parameter value: ``('a','b')`` with quotes doubled."""
    return "(" + ",".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


def adhoc_query_request(query_id: str, params: dict[str, str], return_type: str = "LeafClass") -> etree._Element:
    request = etree.Element(qn(QUERY, "AdhocQueryRequest"), nsmap={"query": QUERY, "rim": RIM})
    etree.SubElement(request, qn(QUERY, "ResponseOption"), returnComposedObjects="true", returnType=return_type)
    query = etree.SubElement(request, qn(RIM, "AdhocQuery"), id=query_id)
    for name, value in params.items():
        slot = etree.SubElement(query, qn(RIM, "Slot"), name=name)
        etree.SubElement(etree.SubElement(slot, qn(RIM, "ValueList")), qn(RIM, "Value")).text = value
    return request


async def get_documents(client: SoapClient, registry_url: str, unique_ids: Sequence[str]) -> list[DocumentEntry]:
    """GetDocuments by $XDSDocumentEntryUniqueId: every DocumentEntry holding one of ``unique_ids``."""
    request = adhoc_query_request(GET_DOCUMENTS, {"$XDSDocumentEntryUniqueId": quoted_list(unique_ids)})
    result = await client.call(registry_url, ACTION_ITI18, request)
    status, errors = parse_registry_response(result.body)
    if status == STATUS_FAILURE:
        raise QueryFailed(errors)
    return [o for o in read_registry_objects(result.body) if isinstance(o, DocumentEntry)]


async def find_documents(client: SoapClient, registry_url: str, patient_id: str,
                         statuses: Sequence[str] = (APPROVED,)) -> list[DocumentEntry]:
    """FindDocuments for one patient (affinity-domain CX) and availability statuses."""
    request = adhoc_query_request(FIND_DOCUMENTS, {
        "$XDSDocumentEntryPatientId": "'" + patient_id.replace("'", "''") + "'",
        "$XDSDocumentEntryStatus": quoted_list(statuses),
    })
    result = await client.call(registry_url, ACTION_ITI18, request)
    status, errors = parse_registry_response(result.body)
    if status == STATUS_FAILURE:
        raise QueryFailed(errors)
    return [o for o in read_registry_objects(result.body) if isinstance(o, DocumentEntry)]
