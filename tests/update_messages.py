"""ITI-57 Update Document Set requests written as text, in the NIST toolkit's shapes.

Built on :func:`tests.messages.submit_objects_request` (a complete SubmissionSet, DocumentEntry or
Folder as a Document Source writes it) plus the few things an update adds, spelled out literally:
the ``lid`` attribute, the ``PreviousVersion`` / ``AssociationPropagation`` slots on the
SubmissionSet's HasMember, and UpdateAvailabilityStatus associations with OriginalStatus/NewStatus.
Nothing here comes from the code under test.
"""

from __future__ import annotations

from tests import messages as m

ACTION_ITI57 = "urn:ihe:iti:2010:UpdateDocumentSet"
UPDATE_AVAILABILITY_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"


def _slot(name: str, value: str) -> str:
    return f'<rim:Slot name="{name}"><rim:ValueList><rim:Value>{value}</rim:Value></rim:ValueList></rim:Slot>'


def _with_member_slots(xml: str, member_id: str, slots: dict[str, str]) -> str:
    """``xml`` with ``slots`` added to the SubmissionSet's HasMember that targets ``member_id``."""
    marker = f'targetObject="{member_id}" objectType="{m.OT_ASSOCIATION}">'
    assert xml.count(marker) == 1, f"no single HasMember to {member_id}"
    return xml.replace(marker, marker + "".join(_slot(k, val) for k, val in slots.items()))


def _append(xml: str, fragment: str) -> str:
    return xml.replace("</rim:RegistryObjectList>", fragment + "</rim:RegistryObjectList>")


def envelope(xml: str | bytes) -> bytes:
    return m.soap_envelope(ACTION_ITI57, xml.encode() if isinstance(xml, str) else xml)


def new_document_version(patient_id: str, lid: str, previous_version: str | None, unique_id: str, *,
                         propagation: str | None = None, **kwargs) -> bytes:
    """A new version (``Document01``, lid ``lid``) of a registered DocumentEntry; kwargs as submit_objects_request."""
    built = m.submit_objects_request(patient_id, document_unique_ids=[unique_id], **kwargs)
    xml = built.xml.decode().replace('<rim:ExtrinsicObject id="Document01"',
                                     f'<rim:ExtrinsicObject id="Document01" lid="{lid}"', 1)
    slots = {} if previous_version is None else {"PreviousVersion": previous_version}
    if propagation is not None:
        slots["AssociationPropagation"] = propagation
    return envelope(_with_member_slots(xml, "Document01", slots))


def new_folder_version(patient_id: str, lid: str, previous_version: str, unique_id: str, **kwargs) -> bytes:
    """A new version (``Folder01``, lid ``lid``) of a registered Folder."""
    built = m.submit_objects_request(patient_id, documents=0, folder=True, folder_unique_id=unique_id, **kwargs)
    xml = built.xml.decode().replace('<rim:RegistryPackage id="Folder01"',
                                     f'<rim:RegistryPackage id="Folder01" lid="{lid}"', 1)
    return envelope(_with_member_slots(xml, "Folder01", {"PreviousVersion": previous_version}))


def status_change(patient_id: str, target: str, original: str | None, new: str | None, *,
                  source: str = "SubmissionSet01", member: bool = False) -> bytes:
    """A SubmissionSet and one UpdateAvailabilityStatus association to ``target`` (with ``member``,
    also a HasMember from the SubmissionSet to that association, as some senders add)."""
    built = m.submit_objects_request(patient_id, documents=0)
    slots = "".join(_slot(n, val) for n, val in (("OriginalStatus", original), ("NewStatus", new)) if val)
    assoc = (f'<rim:Association id="StatusChange01" associationType="{UPDATE_AVAILABILITY_STATUS}"'
             f' sourceObject="{source}" targetObject="{target}" objectType="{m.OT_ASSOCIATION}">{slots}'
             "</rim:Association>")
    if member:
        assoc += (f'<rim:Association id="StatusChange01Member" associationType="{m.HAS_MEMBER}"'
                  f' sourceObject="SubmissionSet01" targetObject="StatusChange01" objectType="{m.OT_ASSOCIATION}"/>')
    return envelope(_append(built.xml.decode(), assoc))


def add_to_folder(patient_id: str, folder: str, document: str) -> bytes:
    """A SubmissionSet, a HasMember from the registered ``folder`` to the registered ``document``,
    and the SubmissionSet's HasMember to that association (the ITI-42 form of adding to a Folder)."""
    built = m.submit_objects_request(patient_id, documents=0)
    xml = _append(built.xml.decode(), (
        f'<rim:Association id="Membership01" associationType="{m.HAS_MEMBER}" sourceObject="{folder}"'
        f' targetObject="{document}" objectType="{m.OT_ASSOCIATION}"/>'
        f'<rim:Association id="Membership01Member" associationType="{m.HAS_MEMBER}" sourceObject="SubmissionSet01"'
        f' targetObject="Membership01" objectType="{m.OT_ASSOCIATION}"/>'))
    return envelope(xml)
