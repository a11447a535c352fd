"""The ITI-18 request: query:AdhocQueryRequest to a plain :class:`QueryRequest` (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from lxml import etree

from ihe.errors import ErrorCode, XDSError
from ihe.namespaces import QUERY, RIM, qn
from ihe.soap import FAULT_SENDER, SoapFault
from registry.stored_query.params import SlotValues


class ReturnType(StrEnum):
    LEAF_CLASS = "LeafClass"
    OBJECT_REF = "ObjectRef"


@dataclass(frozen=True, slots=True)
class QueryRequest:
    query_id: str  # as sent (lower-cased for lookup by the caller)
    return_type: ReturnType
    home: str | None  # the AdhocQuery home attribute
    slots: tuple[SlotValues, ...]


def parse_adhoc_query_request(body: etree._Element) -> QueryRequest:
    """Read an AdhocQueryRequest.

    Raises SoapFault when the body is not an AdhocQueryRequest at all (nothing to answer in
    ebRS terms), XDSError (XDSRegistryError) when it is one but malformed.
    """
    if body.tag != qn(QUERY, "AdhocQueryRequest"):
        raise SoapFault(FAULT_SENDER, f"the SOAP Body holds {body.tag}, not query:AdhocQueryRequest "
                        f"({{{QUERY}}}AdhocQueryRequest)")
    option = body.find(qn(QUERY, "ResponseOption"))
    if option is None:
        raise XDSError.of(ErrorCode.REGISTRY_ERROR, "query:ResponseOption is missing: it must give returnType "
                          "LeafClass or ObjectRef")
    raw_type = option.get("returnType")
    try:
        return_type = ReturnType(raw_type)
    except ValueError:
        raise XDSError.of(ErrorCode.REGISTRY_ERROR, f"ResponseOption returnType {raw_type!r} is not supported: "
                          "use LeafClass or ObjectRef") from None
    query = body.find(qn(RIM, "AdhocQuery"))
    if query is None:
        raise XDSError.of(ErrorCode.REGISTRY_ERROR, "rim:AdhocQuery is missing from the AdhocQueryRequest")
    query_id = (query.get("id") or "").strip()
    if not query_id:
        raise XDSError.of(ErrorCode.REGISTRY_ERROR, "rim:AdhocQuery has no id: it must name the stored query UUID")
    slots = []
    for slot in query.iterchildren(qn(RIM, "Slot")):
        name = (slot.get("name") or "").strip()
        if not name:
            raise XDSError.of(ErrorCode.REGISTRY_ERROR, "a rim:Slot of the AdhocQuery has no name")
        values = tuple((v.text or "").strip() for v in slot.iter(qn(RIM, "Value")))
        slots.append(SlotValues(name, tuple(v for v in values if v)))
    home = (query.get("home") or "").strip() or None
    return QueryRequest(query_id=query_id, return_type=return_type, home=home, slots=tuple(slots))
