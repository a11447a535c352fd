"""Document Administrator side of ITI-62 Delete Document Set and ITI-86 Remove Documents.

- :func:`remove_metadata` sends the entryUUIDs to remove to the registry (ITI-62). The registry
  refuses to leave an Association dangling, so removing a document means naming the
  Associations that reference it as well: :func:`document_removal_set` finds them by ITI-18.
- :func:`remove_documents` asks a repository to delete documents' content (ITI-86).

Removing a document completely is both: its metadata at the registry, its content at the repository.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lxml import etree

from consumer.client.query import QueryFailed, adhoc_query_request, get_documents, quoted_list
from consumer.client.retrieve import DocumentRequest
from consumer.client.soap import SoapClient
from ihe.errors import STATUS_FAILURE, RegistryError, parse_registry_response
from ihe.metadata.ebrim import read_registry_objects
from ihe.metadata.model import Association
from ihe.namespaces import ACTION_ITI18, ACTION_ITI62, ACTION_ITI86, LCM, RIM, RMD, XDSB, qn

GET_ASSOCIATIONS = "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155"


@dataclass(slots=True)
class RemoveResult:
    status: str
    errors: list[RegistryError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status.endswith(":Success")


def remove_objects_request(entry_uuids: Iterable[str]) -> etree._Element:
    """``lcm:RemoveObjectsRequest`` naming ``entry_uuids`` in an ``rim:ObjectRefList``."""
    root = etree.Element(qn(LCM, "RemoveObjectsRequest"), nsmap={"lcm": LCM, "rim": RIM})
    refs = etree.SubElement(root, qn(RIM, "ObjectRefList"))
    for entry_uuid in dict.fromkeys(entry_uuids):
        etree.SubElement(refs, qn(RIM, "ObjectRef"), id=entry_uuid)
    return root


def remove_documents_request(requests: Sequence[DocumentRequest]) -> etree._Element:
    """``rmd:RemoveDocumentsRequest`` with one ``xdsb:DocumentRequest`` per document."""
    root = etree.Element(qn(RMD, "RemoveDocumentsRequest"), nsmap={"rmd": RMD, "xdsb": XDSB})
    for r in requests:
        dr = etree.SubElement(root, qn(XDSB, "DocumentRequest"))
        if r.home_community_id:
            etree.SubElement(dr, qn(XDSB, "HomeCommunityId")).text = r.home_community_id
        etree.SubElement(dr, qn(XDSB, "RepositoryUniqueId")).text = r.repository_unique_id
        etree.SubElement(dr, qn(XDSB, "DocumentUniqueId")).text = r.document_unique_id
    return root


async def remove_metadata(client: SoapClient, registry_url: str, entry_uuids: Iterable[str]) -> RemoveResult:
    """ITI-62: remove the registry objects ``entry_uuids`` (all or nothing)."""
    result = await client.call(registry_url, ACTION_ITI62, remove_objects_request(entry_uuids))
    return RemoveResult(*parse_registry_response(result.body))


async def remove_documents(client: SoapClient, repository_url: str,
                           requests: Sequence[DocumentRequest]) -> RemoveResult:
    """ITI-86: delete the documents' content at the repository (Success, PartialSuccess or Failure)."""
    result = await client.call(repository_url, ACTION_ITI86, remove_documents_request(requests))
    return RemoveResult(*parse_registry_response(result.body))


async def associations_of(client: SoapClient, registry_url: str, entry_uuids: Sequence[str]) -> list[Association]:
    """ITI-18 GetAssociations: the Associations whose source or target is one of ``entry_uuids``."""
    if not entry_uuids:
        return []
    request = adhoc_query_request(GET_ASSOCIATIONS, {"$uuid": quoted_list(entry_uuids)})
    result = await client.call(registry_url, ACTION_ITI18, request)
    status, errors = parse_registry_response(result.body)
    if status == STATUS_FAILURE:
        raise QueryFailed(errors)
    return [o for o in read_registry_objects(result.body) if isinstance(o, Association)]


async def document_removal_set(client: SoapClient, registry_url: str,
                               unique_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """What ITI-62 must name to remove the DocumentEntries of ``unique_ids``: ``(entryUUIDs, missing uniqueIds)``.

    The entries themselves, every Association referencing them (SubmissionSet and Folder
    membership, relations to other documents) and the Associations referencing those (the
    SubmissionSet HasMember that records a Folder membership). Other objects stay.
    """
    entries = await get_documents(client, registry_url, unique_ids)
    found = {e.unique_id for e in entries}
    ids = [e.entry_uuid for e in entries]
    level = ids
    for _ in range(2):
        associations = [a.entry_uuid for a in await associations_of(client, registry_url, level)
                        if a.entry_uuid not in ids]
        level = list(dict.fromkeys(associations))
        ids += level
    return ids, [u for u in unique_ids if u not in found]
