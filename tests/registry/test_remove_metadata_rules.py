"""The pure rules of ITI-62 (reading the request, the reference check), without a database."""

from __future__ import annotations

import pytest
from lxml import etree

from ihe.errors import XDSError
from ihe.soap import SoapFault
from registry.remove_metadata import AssociationRef, check_removal, read_remove_request, touched_folders
from registry.store import StoredObject
from tests.remove_messages import remove_objects_request

HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
DOC = "urn:uuid:11111111-1111-4111-8111-111111111111"
FOLDER = "urn:uuid:22222222-2222-4222-8222-222222222222"
MEMBER = "urn:uuid:33333333-3333-4333-8333-333333333333"


def body(xml: bytes) -> etree._Element:
    return etree.fromstring(xml)


def test_ids_in_order_without_repeats():
    assert read_remove_request(body(remove_objects_request([DOC, FOLDER, DOC]))) == [DOC, FOLDER]


@pytest.mark.parametrize("xml", [
    remove_objects_request([]),
    remove_objects_request([DOC], object_ref_list=False),
    remove_objects_request([""]),
    remove_objects_request([DOC], adhoc_query=True),
])
def test_forbidden_or_empty_requests_are_registry_errors(xml):
    with pytest.raises(XDSError) as caught:
        read_remove_request(body(xml))
    assert {e.code for e in caught.value.errors} == {"XDSRegistryError"}


def test_another_body_is_a_fault():
    with pytest.raises(SoapFault):
        read_remove_request(etree.Element("{urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0}SubmitObjectsRequest"))


def test_references_from_outside_the_request_are_errors_from_inside_are_not():
    found = {DOC: StoredObject(DOC, "DocumentEntry", "Approved"), MEMBER: StoredObject(MEMBER, "Association", "A")}
    membership = AssociationRef(MEMBER, HAS_MEMBER, FOLDER, DOC)
    assert check_removal([DOC, MEMBER], found, [membership]) == []
    [problem] = check_removal([DOC], {DOC: found[DOC]}, [membership])
    assert (problem.code, problem.location) == ("ReferencesExistException", DOC)
    assert MEMBER in problem.context and "targetObject" in problem.context
    assert touched_folders(found, [membership]) == [FOLDER]
    assert touched_folders({MEMBER: found[MEMBER]}, [membership]) == [FOLDER]
    assert touched_folders({**found, FOLDER: StoredObject(FOLDER, "Folder", "A")}, [membership]) == []
