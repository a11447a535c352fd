"""Pure rules of RAD-68: which failures are permanent, and the XDS form of the hospital number."""

from __future__ import annotations

import pytest

from ihe.metadata.model import Identifiable
from ihe.metadata.validate import cx_problem
from imaging_source.publish import PublishError, is_permanent_failure, is_permanent_fault, xds_source_patient_id


@pytest.mark.parametrize(("codes", "permanent"), [
    (["XDSRegistryMetadataError"], True),
    (["XDSRepositoryMetadataError"], True),
    (["XDSPatientIdDoesNotMatch"], True),
    (["XDSUnknownPatientId"], True),
    (["XDSRegistryBusy"], False),
    (["XDSRepositoryBusy"], False),
    (["XDSRegistryNotAvailable"], False),
    (["XDSRegistryOutOfResources"], False),
    (["XDSRegistryError"], False),
    (["XDSRegistryBusy", "XDSRegistryMetadataError"], True),  # the metadata error stays when the peer is free
    ([], False),  # a Failure without a reason says nothing about the submission
])
def test_failure_codes(codes, permanent):
    assert is_permanent_failure(codes) is permanent


def test_soap_faults():
    assert is_permanent_fault("Sender", 400)
    assert not is_permanent_fault("Receiver", 500)
    assert not is_permanent_fault("Sender", 503)


@pytest.mark.parametrize("local", [
    Identifiable("A1", "1.3.6.1.4.1.21367.2026.1.2", "HOSPA"),
    Identifiable("A1", "1.3.6.1.4.1.21367.2026.1.2"),
])
def test_source_patient_id_is_cx1_and_cx4(local):
    xds = xds_source_patient_id(local)
    assert xds.to_cx() == "A1^^^&1.3.6.1.4.1.21367.2026.1.2&ISO"
    assert cx_problem(xds.to_cx()) is None


def test_source_patient_id_without_oid_is_a_permanent_failure():
    with pytest.raises(PublishError) as caught:
        xds_source_patient_id(Identifiable("A1", None, "HOSPA"))
    assert caught.value.permanent and "patient-id-issuer-oid" in str(caught.value)
