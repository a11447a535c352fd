"""ITI-18 stored queries for browsing a registry (submission sets, documents by reference id), client side.

Kept apart from :mod:`consumer.client.query` (the consumer's everyday queries) so the registry
browser's needs do not churn that module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from consumer.client.query import APPROVED, QueryFailed, adhoc_query_request, quoted_list
from consumer.client.soap import SoapClient
from ihe.errors import STATUS_FAILURE, parse_registry_response
from ihe.metadata.ebrim import read_registry_objects
from ihe.metadata.model import Association, DocumentEntry, Folder, SubmissionSet
from ihe.namespaces import ACTION_ITI18

FIND_SUBMISSION_SETS = "urn:uuid:f26abbcb-ac74-4422-8a30-edb644bbc1a9"
GET_SUBMISSION_SET_AND_CONTENTS = "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83"
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_DOCUMENTS_BY_REFERENCE_ID = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
STUDY_UID_TYPE = "urn:ihe:iti:xds:2016:studyInstanceUID"


@dataclass(slots=True)
class SubmissionSetContents:
    """GetSubmissionSetAndContents: the set, its documents and folders, and the associations between them."""

    submission_set: SubmissionSet
    documents: list[DocumentEntry] = field(default_factory=list)
    folders: list[Folder] = field(default_factory=list)
    associations: list[Association] = field(default_factory=list)


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def _query(client: SoapClient, registry_url: str, query_id: str, params: dict[str, str]) -> list:
    result = await client.call(registry_url, ACTION_ITI18, adhoc_query_request(query_id, params))
    status, errors = parse_registry_response(result.body)
    if status == STATUS_FAILURE:
        raise QueryFailed(errors)
    return read_registry_objects(result.body)


async def find_submission_sets(client: SoapClient, registry_url: str, patient_id: str,
                               statuses: Sequence[str] = (APPROVED,)) -> list[SubmissionSet]:
    """FindSubmissionSets for one patient (affinity-domain CX)."""
    objects = await _query(client, registry_url, FIND_SUBMISSION_SETS, {
        "$XDSSubmissionSetPatientId": _quoted(patient_id), "$XDSSubmissionSetStatus": quoted_list(statuses)})
    return [o for o in objects if isinstance(o, SubmissionSet)]


async def get_submission_set_and_contents(client: SoapClient, registry_url: str,
                                          entry_uuid: str) -> SubmissionSetContents | None:
    """GetSubmissionSetAndContents by entryUUID; None when the registry has no such set."""
    objects = await _query(client, registry_url, GET_SUBMISSION_SET_AND_CONTENTS,
                           {"$XDSSubmissionSetEntryUUID": _quoted(entry_uuid)})
    sets = [o for o in objects if isinstance(o, SubmissionSet)]
    if not sets:
        return None
    return SubmissionSetContents(
        sets[0], [o for o in objects if isinstance(o, DocumentEntry)], [o for o in objects if isinstance(o, Folder)],
        [o for o in objects if isinstance(o, Association)])


async def find_documents_any_status(client: SoapClient, registry_url: str, patient_id: str) -> list[DocumentEntry]:
    """FindDocuments for Approved and Deprecated entries (every version the registry lists)."""
    objects = await _query(client, registry_url, FIND_DOCUMENTS, {
        "$XDSDocumentEntryPatientId": _quoted(patient_id),
        "$XDSDocumentEntryStatus": quoted_list([APPROVED, DEPRECATED])})
    return [o for o in objects if isinstance(o, DocumentEntry)]


def study_reference(study_uid: str) -> str:
    """The referenceIdList value the imaging source gives a study's manifest (CXi, type studyInstanceUID)."""
    return f"{study_uid}^^^^{STUDY_UID_TYPE}"


async def find_study_manifests(client: SoapClient, registry_url: str, patient_id: str,
                               study_uid: str) -> list[DocumentEntry]:
    """FindDocumentsByReferenceId: the Approved DICOM manifests of ``study_uid`` for the patient."""
    objects = await _query(client, registry_url, FIND_DOCUMENTS_BY_REFERENCE_ID, {
        "$XDSDocumentEntryPatientId": _quoted(patient_id),
        "$XDSDocumentEntryStatus": quoted_list([APPROVED]),
        "$XDSDocumentEntryReferenceIdList": quoted_list([study_reference(study_uid)])})
    return [o for o in objects if isinstance(o, DocumentEntry) and o.mime_type == "application/dicom"]
