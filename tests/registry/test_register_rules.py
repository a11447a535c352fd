"""The pure steps of ITI-42 in registry.register: id assignment, reference and uniqueId rules, fragments."""

from __future__ import annotations

import uuid

import pytest

from ihe.errors import ErrorCode, XDSError
from ihe.metadata import vocabulary as v
from ihe.metadata.ebrim import object_fragment, read_submit_objects_request
from ihe.metadata.model import AvailabilityStatus, Identifiable
from ihe.xml import parse_xml
from registry.register import (
    assign_entry_uuids,
    check_references,
    check_unique_ids,
    external_references,
    fragment_with_last_update_time,
    fragment_with_status,
    in_submitted_ids,
    preassigned_ids,
    replacement_folder_memberships,
    submitted_ids,
    with_folder_times,
)
from registry.store import StoredObject, UniqueIdClaim, patient_id_column
from tests import messages as m

PID = m.patient_cx("P1")
OTHER_PID = m.patient_cx("P2")


def read(**kwargs):
    built = m.submit_objects_request(kwargs.pop("patient_id", PID), **kwargs)
    return built, read_submit_objects_request(parse_xml(built.xml))


def codes(errors) -> list[str]:
    return [e.code for e in errors]


def test_symbolic_ids_become_fresh_uuids_and_references_follow():
    _, submitted = read(documents=2, folder=True)
    pkg = assign_entry_uuids(submitted)
    ids = [o.entry_uuid for o in pkg.objects()]
    assert all(i.startswith("urn:uuid:") for i in ids) and len(set(ids)) == len(ids)
    for obj in pkg.objects():
        assert obj.logical_uuid == obj.entry_uuid and obj.version == "1"
        assert obj.status is AvailabilityStatus.APPROVED
    own = set(ids)
    assert all(a.source_uuid in own and a.target_uuid in own for a in pkg.associations)
    names = submitted_ids(submitted, pkg)
    assert names[pkg.documents[0].entry_uuid] == "Document01"
    assert names[pkg.submission_set.entry_uuid] == "SubmissionSet01"
    assert submitted.documents[0].entry_uuid == "Document01"  # the input is not modified
    assert preassigned_ids(submitted) == set() and external_references(pkg) == set()


def test_pre_assigned_uuids_are_kept_in_canonical_form():
    built, submitted = read(use_uuids=True)
    upper = "urn:uuid:" + built.document_id.removeprefix("urn:uuid:").upper()
    submitted.documents[0].entry_uuid = upper
    for a in submitted.associations:
        if a.target_uuid == built.document_id:
            a.target_uuid = upper
    pkg = assign_entry_uuids(submitted)
    assert pkg.documents[0].entry_uuid == built.document_id  # lower case again, references too
    assert any(a.target_uuid == built.document_id for a in pkg.associations)
    assert preassigned_ids(submitted) == {o.entry_uuid for o in pkg.objects()}
    assert submitted_ids(submitted, pkg) == {}


def test_malformed_uuid_and_dangling_symbolic_reference_are_metadata_errors():
    _, submitted = read()
    submitted.documents[0].entry_uuid = "urn:uuid:not-a-uuid"
    submitted.associations[0].target_uuid = "Document99"
    with pytest.raises(XDSError) as exc:
        assign_entry_uuids(submitted)
    assert codes(exc.value.errors) == [ErrorCode.REGISTRY_METADATA_ERROR] * 2
    contexts = " | ".join(e.context for e in exc.value.errors)
    assert "'urn:uuid:not-a-uuid' is not a valid urn:uuid" in contexts
    assert "'Document99' is a symbolic id that no object of this submission has" in contexts


def test_new_folders_get_the_submission_time():
    _, submitted = read(folder=True)
    pkg = with_folder_times(assign_entry_uuids(submitted), "20300101120000")
    assert pkg.folders[0].last_update_time == "20300101120000"


def stored(entry_uuid: str, kind: str = "DocumentEntry", status: str = v.STATUS_APPROVED, patient: str = PID,
           unique_id: str = "1.2.3") -> StoredObject:
    # The patient id as the store writes it.
    return StoredObject(entry_uuid, kind, status, patient_id_column(Identifiable.parse_cx(patient)), unique_id, "<x/>")


def new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def related(target: str, relationship: str = "RPLC", patient_id: str = PID):
    _, submitted = read(replaces=target, relationship=relationship, patient_id=patient_id)
    return assign_entry_uuids(submitted)


def test_replacement_of_an_approved_document_is_planned():
    target = new_uuid()
    errors, plan = check_references(related(target), {target: stored(target)})
    assert errors == [] and plan.replaced == [target] and plan.folders == []
    errors, plan = check_references(related(target, "APND"), {target: stored(target)})
    assert errors == [] and plan.replaced == []  # an addendum deprecates nothing


@pytest.mark.parametrize("relationship", ["RPLC", "XFRM_RPLC", "APND", "XFRM"])
def test_relationship_to_a_deprecated_document_is_refused(relationship):
    target = new_uuid()
    errors, _ = check_references(related(target, relationship), {target: stored(target, status=v.STATUS_DEPRECATED)})
    assert codes(errors) == [ErrorCode.REGISTRY_DEPRECATED_DOCUMENT]
    assert target in errors[0].context and "Deprecated" in errors[0].context


def test_signs_may_target_a_deprecated_document():
    target = new_uuid()
    errors, plan = check_references(related(target, "signs"), {target: stored(target, status=v.STATUS_DEPRECATED)})
    assert errors == [] and plan.replaced == []


def test_patient_id_with_a_namespace_beside_the_oid_matches_the_stored_one():
    """A source sending ``id^^^NS&OID&ISO`` replaces its own document: same patient, whatever CX-4.1 holds."""
    target = new_uuid()
    with_namespace = PID.replace("^^^&", "^^^NHS&")
    assert with_namespace != PID
    errors, plan = check_references(related(target, patient_id=with_namespace), {target: stored(target)})
    assert errors == [] and plan.replaced == [target]


def test_relationship_targets_must_exist_be_documents_and_share_the_patient():
    target = new_uuid()
    errors, _ = check_references(related(target), {})
    assert codes(errors) == [ErrorCode.REGISTRY_METADATA_ERROR]
    assert f"{target} is neither in this submission nor in the registry" in errors[0].context
    errors, _ = check_references(related(target), {target: stored(target, kind="Folder")})
    assert codes(errors) == [ErrorCode.REGISTRY_METADATA_ERROR] and "is a Folder" in errors[0].context
    errors, _ = check_references(related(target), {target: stored(target, patient=OTHER_PID)})
    assert codes(errors) == [ErrorCode.PATIENT_ID_DOES_NOT_MATCH]
    assert Identifiable.parse_cx(OTHER_PID).to_cx() in errors[0].context


def test_existing_folder_gains_members_only_when_approved_and_of_the_patient():
    folder = new_uuid()
    _, submitted = read(existing_folder=folder)
    pkg = assign_entry_uuids(submitted)
    errors, plan = check_references(pkg, {folder: stored(folder, kind="Folder")})
    assert errors == [] and plan.folders == [folder]
    errors, _ = check_references(pkg, {folder: stored(folder, kind="Folder", patient=OTHER_PID)})
    assert codes(errors) == [ErrorCode.PATIENT_ID_DOES_NOT_MATCH]
    errors, _ = check_references(pkg, {folder: stored(folder, kind="Folder", status=v.STATUS_DEPRECATED)})
    assert codes(errors) == [ErrorCode.REGISTRY_METADATA_ERROR] and "Approved Folders only" in errors[0].context
    errors, _ = check_references(pkg, {folder: stored(folder, kind="SubmissionSet")})
    assert codes(errors) == [ErrorCode.REGISTRY_METADATA_ERROR] and "cannot gain members" in errors[0].context
    errors, _ = check_references(pkg, {})
    assert codes(errors) == [ErrorCode.REGISTRY_METADATA_ERROR]
    assert f"{folder} is neither in this submission nor in the registry" in errors[0].context


def test_pre_assigned_ids_already_in_the_registry_are_refused():
    _, submitted = read(use_uuids=True)
    pkg = assign_entry_uuids(submitted)
    taken = pkg.documents[0].entry_uuid
    errors, _ = check_references(pkg, {taken: stored(taken)}, preassigned_ids(submitted))
    assert codes(errors) == [ErrorCode.REGISTRY_METADATA_ERROR]
    assert f"entryUUID {taken} is already used in the registry" in errors[0].context


def test_unique_id_rules():
    built, submitted = read(folder=True, hashes=["ABCDEF0123456789ABCDEF0123456789ABCDEF01"])
    pkg = assign_entry_uuids(submitted)
    old = new_uuid()
    same_hash = {built.document_unique_id: UniqueIdClaim(built.document_unique_id, old, "DocumentEntry",
                                                         "abcdef0123456789abcdef0123456789abcdef01")}
    assert check_unique_ids(pkg, same_hash) == []  # same hash, case aside: accepted
    other_hash = {built.document_unique_id: UniqueIdClaim(built.document_unique_id, old, "DocumentEntry", "00" * 20)}
    [e] = check_unique_ids(pkg, other_hash)
    assert e.code == ErrorCode.NON_IDENTICAL_HASH and built.document_unique_id in e.context and "00" * 20 in e.context
    held_by_folder = {built.document_unique_id: UniqueIdClaim(built.document_unique_id, old, "Folder", None)}
    assert codes(check_unique_ids(pkg, held_by_folder)) == [ErrorCode.DUPLICATE_UNIQUE_ID_IN_REGISTRY]
    sets = {u: UniqueIdClaim(u, old, "SubmissionSet", None) for u in (built.submission_set_unique_id,
                                                                        built.folder_unique_id)}
    errors = check_unique_ids(pkg, sets)
    assert codes(errors) == [ErrorCode.DUPLICATE_UNIQUE_ID_IN_REGISTRY] * 2
    assert built.submission_set_unique_id in errors[0].context and built.folder_unique_id in errors[1].context


def test_same_unique_id_with_another_size_is_non_identical_size():
    built, submitted = read(hashes=["ab" * 20], sizes=[100])
    pkg = assign_entry_uuids(submitted)
    uid, old = built.document_unique_id, new_uuid()
    assert check_unique_ids(pkg, {uid: UniqueIdClaim(uid, old, "DocumentEntry", "ab" * 20, 100)}) == []
    [e] = check_unique_ids(pkg, {uid: UniqueIdClaim(uid, old, "DocumentEntry", "ab" * 20, 101)})
    assert e.code == ErrorCode.NON_IDENTICAL_SIZE and uid in e.context and "size 101" in e.context
    assert "size 100" in e.context and e.location == pkg.documents[0].entry_uuid
    both = check_unique_ids(pkg, {uid: UniqueIdClaim(uid, old, "DocumentEntry", "cd" * 20, 7)})
    assert codes(both) == [ErrorCode.NON_IDENTICAL_HASH, ErrorCode.NON_IDENTICAL_SIZE]
    # A claim from before sizes were kept (size unknown) decides by hash alone.
    assert check_unique_ids(pkg, {uid: UniqueIdClaim(uid, old, "DocumentEntry", "ab" * 20, None)}) == []


@pytest.mark.parametrize("relationship", ["RPLC", "XFRM_RPLC"])
def test_a_replacement_joins_the_folders_of_the_original(relationship):
    original, folder_a, folder_b, unrelated = new_uuid(), new_uuid(), new_uuid(), new_uuid()
    _, submitted = read(replaces=original, relationship=relationship, existing_folder=folder_b)
    pkg = assign_entry_uuids(submitted)
    ss, replacement = pkg.submission_set.entry_uuid, pkg.documents[0].entry_uuid
    ids = iter(uuid.UUID(int=i) for i in range(1, 10))
    added = replacement_folder_memberships(
        pkg, [(folder_b, original), (folder_a, original), (folder_a, unrelated)], lambda: next(ids))
    # folder_b already gets the replacement from the submission itself: only folder_a is added.
    assert [(a.type, a.source_uuid, a.target_uuid) for a in added] == [
        (v.HAS_MEMBER, folder_a, replacement), (v.HAS_MEMBER, ss, added[0].entry_uuid)]
    assert added[0].entry_uuid == f"urn:uuid:{uuid.UUID(int=1)}" and added[0].logical_uuid == added[0].entry_uuid
    assert all(a.status is AvailabilityStatus.APPROVED and a.version == "1" for a in added)
    assert replacement_folder_memberships(pkg, [(folder_a, unrelated)]) == []
    _, appended = read(replaces=original, relationship="APND")
    assert replacement_folder_memberships(assign_entry_uuids(appended), [(folder_a, original)]) == []


def test_errors_name_the_ids_the_submitter_sent():
    _, submitted = read()
    pkg = assign_entry_uuids(submitted)
    doc = pkg.documents[0].entry_uuid
    target = new_uuid()
    [e] = check_references(related(target), {})[0]
    renamed = in_submitted_ids([e.__class__(e.code, f"DocumentEntry {doc} and {target}", doc)],
                               submitted_ids(submitted, pkg))
    assert renamed[0].context == f"DocumentEntry Document01 and {target}" and renamed[0].location == "Document01"


def test_status_rewrite_changes_only_the_root_status():
    _, submitted = read()
    pkg = assign_entry_uuids(submitted)
    fragment = object_fragment(pkg.documents[0]).decode()
    rewritten = fragment_with_status(fragment, v.STATUS_DEPRECATED)
    assert rewritten == fragment.replace(f'status="{v.STATUS_APPROVED}"', f'status="{v.STATUS_DEPRECATED}"', 1)
    deprecated = pkg.documents[0]
    deprecated.status = AvailabilityStatus.DEPRECATED
    assert rewritten == object_fragment(deprecated).decode()  # the same as rendering the changed object


def test_last_update_time_rewrite_replaces_or_adds_the_slot():
    _, submitted = read(folder=True)
    pkg = with_folder_times(assign_entry_uuids(submitted), "20200101000000")
    folder = pkg.folders[0]
    rewritten = fragment_with_last_update_time(object_fragment(folder).decode(), "20300202020202")
    folder.last_update_time = "20300202020202"
    assert rewritten == object_fragment(folder).decode()
    folder.last_update_time = None
    added = fragment_with_last_update_time(object_fragment(folder).decode(), "20300202020202")
    root = parse_xml(added.encode())
    first = root[0]
    assert first.get("name") == "lastUpdateTime" and first[0][0].text == "20300202020202"
