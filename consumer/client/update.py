"""ITI-57 Update Document Set, client side: availability status changes (deprecate / approve again).

A Document Administrator sends a new SubmissionSet and one Association of type
``urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus`` from it to the object (the latest
version of a DocumentEntry or Folder, or a Folder membership), with the OriginalStatus and
NewStatus slots (ITI TF-2b 3.57.4.1.3.3.2). The registry changes the status all or nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lxml import etree

from consumer.client.soap import SoapClient
from consumer.client.source import new_entry_uuid, submission_package
from ihe.errors import RegistryError, parse_registry_response
from ihe.metadata import vocabulary as v
from ihe.metadata.ebrim import write_submit_objects_request
from ihe.metadata.model import Association, AssociationType, Code, SubmissionPackage
from ihe.namespaces import ACTION_ITI57

APPROVED = v.STATUS_APPROVED
DEPRECATED = v.STATUS_DEPRECATED


@dataclass(slots=True)
class UpdateResult:
    status: str
    errors: list[RegistryError]
    response: etree._Element
    package: SubmissionPackage

    @property
    def ok(self) -> bool:
        return self.status.endswith(":Success")


def status_change_package(patient_id: str, entry_uuid: str, new_status: str, *, original_status: str,
                          source_id: str, content_type_code: Code | None = None,
                          author_person: str | None = None) -> SubmissionPackage:
    """A SubmissionSet for ``patient_id`` and its UpdateAvailabilityStatus association to ``entry_uuid``."""
    package = submission_package(patient_id, [], source_id=source_id, content_type_code=content_type_code,
                                 author_person=author_person)
    change = Association(entry_uuid=new_entry_uuid(), type=AssociationType.UPDATE_AVAILABILITY_STATUS,
                         source_uuid=package.submission_set.entry_uuid, target_uuid=entry_uuid,
                         original_status=original_status, new_status=new_status)
    return dataclasses.replace(package, associations=[*package.associations, change])


async def change_status(client: SoapClient, registry_url: str, patient_id: str, entry_uuid: str, new_status: str,
                        *, original_status: str, source_id: str, **submission_set) -> UpdateResult:
    """Send ITI-57 for one status change; the registry's RegistryResponse status and errors."""
    package = status_change_package(patient_id, entry_uuid, new_status, original_status=original_status,
                                    source_id=source_id, **submission_set)
    result = await client.call(registry_url, ACTION_ITI57, write_submit_objects_request(package))
    status, errors = parse_registry_response(result.body)
    return UpdateResult(status, errors, result.body, package)


async def deprecate(client: SoapClient, registry_url: str, patient_id: str, entry_uuid: str, *, source_id: str,
                    **submission_set) -> UpdateResult:
    """Approved -> Deprecated (e.g. a manifest whose instances were all rejected)."""
    return await change_status(client, registry_url, patient_id, entry_uuid, DEPRECATED, original_status=APPROVED,
                               source_id=source_id, **submission_set)


async def approve(client: SoapClient, registry_url: str, patient_id: str, entry_uuid: str, *, source_id: str,
                  **submission_set) -> UpdateResult:
    """Deprecated -> Approved (undo a deprecation)."""
    return await change_status(client, registry_url, patient_id, entry_uuid, APPROVED, original_status=DEPRECATED,
                               source_id=source_id, **submission_set)
