"""ITI-62 and ITI-86 requests as a Document Administrator (NIST toolkit style) sends them, as text.

Written by hand, not through the code under test, like :mod:`tests.messages` (whose SOAP
envelope is reused): namespaces are spelled out literally here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

from tests.messages import soap_envelope

ACTION_ITI62 = "urn:ihe:iti:2010:DeleteDocumentSet"
ACTION_ITI62_RESPONSE = "urn:ihe:iti:2010:DeleteDocumentSetResponse"
ACTION_ITI86 = "urn:ihe:iti:2017:RemoveDocuments"
ACTION_ITI86_RESPONSE = "urn:ihe:iti:2017:RemoveDocumentsResponse"
LCM_NS = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
RIM_NS = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
RMD_NS = "urn:ihe:iti:rmd:2017"
XDSB_NS = "urn:ihe:iti:xds-b:2007"


def remove_objects_request(ids: Iterable[str], *, adhoc_query: bool = False, deletion_scope: str | None = None,
                           object_ref_list: bool = True) -> bytes:
    """``lcm:RemoveObjectsRequest`` naming ``ids`` in an ``rim:ObjectRefList``.

    ``adhoc_query`` / ``deletion_scope`` / ``object_ref_list=False`` make the forms ITI-62 forbids.
    """
    scope = f' deletionScope="{escape(deletion_scope)}"' if deletion_scope else ""
    refs = "".join(f'<rim:ObjectRef id="{escape(i)}"/>' for i in ids)
    query = ('<rim:AdhocQuery id="urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d">'
             '<rim:Slot name="$XDSDocumentEntryPatientId"><rim:ValueList><rim:Value>\'x\'</rim:Value>'
             "</rim:ValueList></rim:Slot></rim:AdhocQuery>"
             if adhoc_query else "")
    ref_list = f"<rim:ObjectRefList>{refs}</rim:ObjectRefList>" if object_ref_list else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<lcm:RemoveObjectsRequest xmlns:lcm="{LCM_NS}" xmlns:rim="{RIM_NS}"{scope}>'
            f"{query}{ref_list}</lcm:RemoveObjectsRequest>").encode()


def delete_document_set_envelope(ids: Iterable[str], **kwargs) -> bytes:
    """A complete ITI-62 SOAP 1.2 request."""
    return soap_envelope(ACTION_ITI62, remove_objects_request(ids, **kwargs))


def remove_documents_request(documents: Sequence[tuple[str, str]], *, home_community_id: str | None = None) -> bytes:
    """``rmd:RemoveDocumentsRequest`` with one ``xdsb:DocumentRequest`` per (repositoryUniqueId, documentUniqueId)."""
    home = f"<xds:HomeCommunityId>{escape(home_community_id)}</xds:HomeCommunityId>" if home_community_id else ""
    requests = "".join(
        f"<xds:DocumentRequest>{home}<xds:RepositoryUniqueId>{escape(repo)}</xds:RepositoryUniqueId>"
        f"<xds:DocumentUniqueId>{escape(doc)}</xds:DocumentUniqueId></xds:DocumentRequest>"
        for repo, doc in documents)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<rmd:RemoveDocumentsRequest xmlns:rmd="{RMD_NS}" xmlns:xds="{XDSB_NS}">{requests}'
            "</rmd:RemoveDocumentsRequest>").encode()


def remove_documents_envelope(documents: Sequence[tuple[str, str]], **kwargs) -> bytes:
    """A complete ITI-86 SOAP 1.2 request."""
    return soap_envelope(ACTION_ITI86, remove_documents_request(documents, **kwargs), to="http://localhost/repository")
