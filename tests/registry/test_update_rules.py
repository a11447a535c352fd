"""The pure steps of ITI-57: which operations a request asks for, and the checks against stored versions."""

from __future__ import annotations

import pytest

from ihe.errors import XDSError
from ihe.xml import parse_xml
from registry import update
from registry.update_store import Version
from tests import messages as m
from tests import update_messages as u

LID = "urn:uuid:6b0b4c3e-8f3d-4a55-9b0a-0d1f4b7f2a10"


def request_body(envelope: bytes):
    return parse_xml(envelope).find("{http://www.w3.org/2003/05/soap-envelope}Body")[0]


def plan(envelope: bytes) -> update.Operations:
    package, _ = update.read_update(request_body(envelope))
    return update.plan_operations(package)


def codes(envelope: bytes) -> list[str]:
    with pytest.raises(XDSError) as exc:
        plan(envelope)
    return [e.code for e in exc.value.errors]


def test_a_new_version_is_planned_with_its_previous_version_and_propagation():
    pid = m.new_patient_id()
    ops = plan(u.new_document_version(pid, LID.upper().replace("URN:UUID:", "urn:uuid:"), "3", m.new_oid(),
                                      propagation="no"))
    [op] = ops.versions
    assert (op.kind, op.entry_uuid, op.lid, op.previous_version, op.propagate) == ("DocumentEntry", "Document01", LID,
                                                                                    3, False)
    assert ops.status_changes == [] and ops.memberships == []


def test_status_change_is_planned():
    ops = plan(u.status_change(m.new_patient_id(), LID, u.APPROVED, u.DEPRECATED))
    assert [(c.target, c.original, c.new) for c in ops.status_changes] == [(LID, u.APPROVED, u.DEPRECATED)]


@pytest.mark.parametrize("case, code", [
    ("symbolic lid", "XDSMetadataUpdateError"),
    ("bad PreviousVersion", "XDSMetadataUpdateError"),
    ("bad propagation", "XDSMetadataUpdateError"),
    ("no NewStatus", "XDSMetadataUpdateError"),
    ("status of a symbolic id", "XDSMetadataUpdateError"),
    ("submission set with a lid", "XDSMetadataUpdateError"),
])
def test_requests_that_are_not_valid_operations(case, code):
    pid = m.new_patient_id()
    if case == "symbolic lid":
        envelope = u.new_document_version(pid, "SomeLogicalId", "1", m.new_oid())
    elif case == "bad PreviousVersion":
        envelope = u.new_document_version(pid, LID, "one", m.new_oid())
    elif case == "bad propagation":
        envelope = u.new_document_version(pid, LID, "1", m.new_oid(), propagation="maybe")
    elif case == "no NewStatus":
        envelope = u.status_change(pid, LID, u.APPROVED, None)
    elif case == "status of a symbolic id":
        envelope = u.status_change(pid, "Document99", u.APPROVED, u.DEPRECATED)
    else:
        envelope = u.status_change(pid, LID, u.APPROVED, u.DEPRECATED).replace(
            b'<rim:RegistryPackage id="SubmissionSet01"', f'<rim:RegistryPackage id="SubmissionSet01" lid="{LID}"'
            .encode())
    assert codes(envelope) == [code]


def test_check_versions_reports_every_difference():
    pid = m.new_patient_id()
    package, _ = update.read_update(request_body(u.new_document_version(pid, LID, "1", "1.2.3.4")))
    ops = update.plan_operations(package)
    stored = Version("DocumentEntry", "urn:uuid:11111111-1111-4111-8111-111111111111", LID, 2, True,
                     u.DEPRECATED, "other^^^&1.2.3&ISO", "9.9.9", m.ON_DEMAND, "")
    found = [e.code for e in update.check_versions(package, ops, {LID: stored})]
    assert sorted(found) == sorted(["XDSMetadataUpdateError", "XDSMetadataVersionError", "XDSMetadataUpdateError",
                                    "XDSMetadataUpdateError", "XDSPatientIDReconciliationError"])
    assert [e.code for e in update.check_versions(package, ops, {})] == ["XDSMetadataUpdateError"]
