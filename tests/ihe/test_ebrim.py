"""ebRIM 3.0 <-> XDS model: reading NIST-style messages, round trips, structural errors, fragments, XSDs."""

from __future__ import annotations

import copy
import random

import pytest
from lxml import etree

from ihe.errors import ErrorCode, XDSError
from ihe.metadata import ebrim
from ihe.metadata import vocabulary as v
from ihe.metadata.model import (
    Association,
    AssociationType,
    Author,
    AvailabilityStatus,
    Code,
    DocumentEntry,
    DocumentEntryType,
    Folder,
    Identifiable,
    LocalizedString,
    ReferenceId,
    Slot,
    SubmissionPackage,
    SubmissionSet,
)
from ihe.namespaces import QUERY, RIM, RS
from ihe.xml import parse_xml
from tests import messages as m

PID = m.patient_cx("PT-4711", "1.3.6.1.4.1.21367.13.20.1000")


def read(xml: bytes):
    return ebrim.read_submit_objects_request(parse_xml(xml))


def metadata_error(xml_or_element) -> XDSError:
    element = parse_xml(xml_or_element) if isinstance(xml_or_element, bytes) else xml_or_element
    with pytest.raises(XDSError) as info:
        ebrim.read_submit_objects_request(element)
    err = info.value
    assert [e.code for e in err.errors] == [ErrorCode.REGISTRY_METADATA_ERROR]
    return err


# --- reading NIST-style messages ----------------------------------------------------------------


def test_reads_document_entry_field_by_field():
    built = m.submit_objects_request(
        PID,
        document_unique_ids=["1.2.3.4.5.1"],
        hashes=["da39a3ee5e6b4b0d3255bfef95601890afd80709"],
        sizes=[1234],
        reference_ids=["ACC-1^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession"],
        extra_slots={"urn:example:custom": ["a", "b & c"]},
    )
    pkg = read(built.xml)
    assert len(pkg.documents) == 1
    d = pkg.documents[0]
    assert d.entry_uuid == "Document01"
    assert d.type is DocumentEntryType.STABLE
    assert d.mime_type == "text/plain"
    assert d.unique_id == "1.2.3.4.5.1"
    assert d.patient_id == Identifiable("PT-4711", "1.3.6.1.4.1.21367.13.20.1000")
    assert d.hash == "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    assert d.size == 1234
    assert d.creation_time == m.CREATION_TIME
    assert d.service_start_time == m.SERVICE_START_TIME
    assert d.service_stop_time == m.SERVICE_STOP_TIME
    assert d.language_code == "en-US"
    assert d.legal_authenticator == "^Welby^Marcus^^^Dr^MD"
    assert d.source_patient_id == Identifiable("89765a87b", "1.3.4.5")
    assert d.source_patient_info == list(m.SOURCE_PATIENT_INFO)
    assert d.repository_unique_id == m.TEST_REPOSITORY_UNIQUE_ID
    assert d.reference_ids == [ReferenceId("ACC-1^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession")]
    assert d.title == LocalizedString("Radiology report")
    assert d.comments == LocalizedString("Report of a chest CT")

    def code(c: m.Code) -> Code:
        return Code(c.code, c.scheme, LocalizedString(c.display))

    assert d.class_code == code(m.CLASS_CODE)
    assert d.type_code == code(m.TYPE_CODE)
    assert d.format_code == code(m.FORMAT_CODE)
    assert d.healthcare_facility_type_code == code(m.HCFT_CODE)
    assert d.practice_setting_code == code(m.PRACTICE_SETTING_CODE)
    assert d.confidentiality_codes == [code(m.CONFIDENTIALITY_CODE)]
    assert d.event_codes == [code(c) for c in m.EVENT_CODES]
    a = m.DOCUMENT_AUTHOR
    assert d.authors == [Author(a.person, list(a.institutions), list(a.roles), list(a.specialties), list(a.telecoms))]
    assert d.extra_slots == [Slot("urn:example:custom", ["a", "b & c"])]
    # What a Document Source does not send stays absent.
    assert d.status is None and d.logical_uuid is None and d.version is None and d.home_community_id is None
    assert d.uri is None and d.document_availability is None and d.limited_metadata is False


def test_reads_submission_set_folder_and_associations():
    built = m.submit_objects_request(
        PID, documents=2, folder=True, submission_time="20240105090000", intended_recipients=["Hosp^^^^^^^^^1.2.3"]
    )
    pkg = read(built.xml)
    ss = pkg.submission_set
    assert ss.entry_uuid == built.submission_set_id == "SubmissionSet01"
    assert ss.unique_id == built.submission_set_unique_id
    assert ss.source_id == m.TEST_SOURCE_ID
    assert ss.patient_id == Identifiable.parse_cx(PID)
    assert ss.submission_time == "20240105090000"
    assert ss.intended_recipients == ["Hosp^^^^^^^^^1.2.3"]
    assert ss.title == LocalizedString("Imaging submission")
    assert ss.comments == LocalizedString("Submission of a radiology report")
    assert ss.content_type_code == Code(m.CONTENT_TYPE_CODE.code, m.CONTENT_TYPE_CODE.scheme,
                                        LocalizedString(m.CONTENT_TYPE_CODE.display))
    assert [au.person for au in ss.authors] == [m.SUBMISSION_SET_AUTHOR.person]
    assert ss.authors[0].telecoms == []
    assert ss.limited_metadata is False

    assert [d.entry_uuid for d in pkg.documents] == ["Document01", "Document02"]
    assert [d.unique_id for d in pkg.documents] == built.document_unique_ids
    assert len(pkg.folders) == 1
    f = pkg.folders[0]
    assert f.entry_uuid == "Folder01" and f.unique_id == built.folder_unique_id
    assert f.patient_id == Identifiable.parse_cx(PID)
    assert f.codes == [Code(m.FOLDER_CODE.code, m.FOLDER_CODE.scheme, LocalizedString(m.FOLDER_CODE.display))]
    assert f.title == LocalizedString("Imaging episode")
    assert f.last_update_time is None

    got = {a.entry_uuid: (a.type, a.source_uuid, a.target_uuid) for a in pkg.associations}
    assert got == {k: (AssociationType(t), s, tg) for k, (t, s, tg) in built.associations.items()}
    status = {a.target_uuid: a.submission_set_status for a in pkg.associations if a.source_uuid == ss.entry_uuid}
    assert status["Document01"] == status["Document02"] == "Original"
    assert status["Folder01"] is None


@pytest.mark.parametrize(("short", "expected"), [
    ("RPLC", AssociationType.RPLC), ("APND", AssociationType.APND), ("XFRM", AssociationType.XFRM),
    ("XFRM_RPLC", AssociationType.XFRM_RPLC), ("signs", AssociationType.SIGNS),
])
def test_reads_relationship_associations(short, expected):
    old = m.new_uuid()
    pkg = read(m.submit_objects_request(PID, replaces=old, relationship=short).xml)
    rel = [a for a in pkg.associations if a.type is not AssociationType.HAS_MEMBER]
    assert [(a.type, a.source_uuid, a.target_uuid) for a in rel] == [(expected, "Document01", old)]


def test_reads_addition_to_existing_folder_and_uuid_ids():
    folder = m.new_uuid()
    built = m.submit_objects_request(PID, use_uuids=True, existing_folder=folder)
    pkg = read(built.xml)
    assert pkg.submission_set.entry_uuid.startswith("urn:uuid:")
    doc = pkg.documents[0].entry_uuid
    fd = [a for a in pkg.associations if a.source_uuid == folder]
    assert [(a.type, a.target_uuid) for a in fd] == [(AssociationType.HAS_MEMBER, doc)]
    assert any(a.source_uuid == pkg.submission_set.entry_uuid and a.target_uuid == fd[0].entry_uuid
               for a in pkg.associations)


def test_top_level_and_nested_package_classification_read_alike():
    kwargs = {"folder": True, "document_unique_ids": ["1.2.3"], "submission_set_unique_id": "1.2.4",
              "folder_unique_id": "1.2.5", "submission_time": "20240101000000", "hashes": ["a" * 40]}
    top = m.submit_objects_request(PID, **kwargs)
    nested = m.submit_objects_request(PID, nested_classification=True, **kwargs)
    # The NIST toolkit's form: the SubmissionSet classification is a sibling of the package.
    rol = parse_xml(top.xml).find(f"{{{RIM}}}RegistryObjectList")
    siblings = rol.iterchildren(f"{{{RIM}}}Classification")
    assert any(c.get("classificationNode") == v.SUBMISSION_SET_NODE for c in siblings)
    assert read(top.xml) == read(nested.xml)


def test_reads_the_submission_inside_an_iti41_request():
    built = m.provide_and_register_request(PID, documents=2)
    pkg = read(built.xml)
    assert [d.entry_uuid for d in pkg.documents] == built.document_ids
    assert pkg.documents[0].repository_unique_id is None


def test_absent_values_read_as_none():
    built = m.submit_objects_request(
        PID,
        omit_document={"creationTime", "hash", "size", "languageCode", "sourcePatientId", "title", "author",
                       "classCode", "eventCodeList", "patientId", "uniqueId", "mimeType", "objectType"},
        omit_submission_set={"submissionTime", "uniqueId", "sourceId", "patientId", "contentTypeCode", "title"},
    )
    pkg = read(built.xml)
    d = pkg.documents[0]
    assert d.creation_time is None and d.hash is None and d.size is None and d.language_code is None
    assert d.source_patient_id is None and d.title is None and d.authors == [] and d.class_code is None
    assert d.event_codes == [] and d.patient_id is None and d.unique_id is None and d.mime_type is None
    assert d.type is None
    ss = pkg.submission_set
    assert ss.submission_time is None and ss.unique_id is None and ss.source_id is None
    assert ss.patient_id is None and ss.content_type_code is None and ss.title is None


def test_odd_values_are_kept_for_the_validator():
    xml = m.submit_objects_request(PID).xml.replace(m.STABLE.encode(), b"urn:uuid:not-a-document-type", 1)
    xml = xml.replace(b'<rim:ExtrinsicObject id="Document01"',
                      b'<rim:ExtrinsicObject id="Document01" status="urn:example:Bogus"', 1)
    d = read(xml).documents[0]
    assert d.type == "urn:uuid:not-a-document-type"
    assert d.status == "urn:example:Bogus"


def test_limited_metadata_marker_node_or_scheme():
    xml = m.submit_objects_request(PID, folder=True).xml.decode()
    xml = xml.replace(
        "</rim:RegistryObjectList>",
        '<rim:Classification id="lm1" classifiedObject="SubmissionSet01"'
        f' classificationNode="{v.SS_LIMITED_METADATA}"/>'
        f'<rim:Classification id="lm2" classifiedObject="Document01" classificationScheme="{v.DE_LIMITED_METADATA}"'
        ' nodeRepresentation=""/>'
        f'<rim:Classification id="lm3" classifiedObject="Folder01" classificationNode="{v.FOL_LIMITED_METADATA}"/>'
        "</rim:RegistryObjectList>",
    )
    pkg = read(xml.encode())
    assert pkg.submission_set.limited_metadata and pkg.documents[0].limited_metadata and pkg.folders[0].limited_metadata
    assert ebrim.read_submit_objects_request(ebrim.write_submit_objects_request(pkg)) == pkg


def test_whitespace_and_comments_of_pretty_printed_messages():
    pretty = etree.tostring(etree.fromstring(m.submit_objects_request(PID).xml), pretty_print=True)
    pretty = pretty.replace(b"<rim:Value>", b"<rim:Value>\n   ").replace(b"</rim:Value>", b"\n  </rim:Value>")
    pretty = pretty.replace(b"<rim:Name>", b"<rim:Name><!-- a comment -->")
    element = etree.fromstring(pretty)  # comments kept: the reader must skip them
    pkg = ebrim.read_submit_objects_request(element)
    assert pkg.documents[0].creation_time == m.CREATION_TIME
    assert pkg.documents[0].title == LocalizedString("Radiology report")


# --- structural errors --------------------------------------------------------------------------


def _mutate(xml: bytes, old: str, new: str) -> bytes:
    text = xml.decode()
    assert old in text, old
    return text.replace(old, new, 1).encode()


def test_no_registry_object_list():
    err = metadata_error(f'<lcm:SubmitObjectsRequest xmlns:lcm="{m.LCM_NS}"/>'.encode())
    assert "RegistryObjectList" in err.errors[0].context


def test_no_submission_set():
    xml = m.submit_objects_request(PID, omit_submission_set={"classification"}).xml
    err = metadata_error(xml)
    assert "SubmissionSet01" in err.errors[0].context and "neither" in err.errors[0].context


def test_empty_registry_object_list_has_no_submission_set():
    xml = f'<lcm:SubmitObjectsRequest xmlns:lcm="{m.LCM_NS}"><rim:RegistryObjectList xmlns:rim="{RIM}"/>' \
          "</lcm:SubmitObjectsRequest>"
    assert "no SubmissionSet" in metadata_error(xml.encode()).errors[0].context


def test_two_submission_sets():
    a = parse_xml(m.submit_objects_request(PID).xml)
    b = parse_xml(m.submit_objects_request(PID, submission_set_id="SubmissionSet02").xml)
    rol_a = a.find(f"{{{RIM}}}RegistryObjectList")
    for child in b.find(f"{{{RIM}}}RegistryObjectList"):
        if child.tag == f"{{{RIM}}}RegistryPackage" or child.get("classifiedObject") == "SubmissionSet02":
            rol_a.append(copy.deepcopy(child))
    ctx = metadata_error(a).errors[0].context
    assert "2 SubmissionSets" in ctx and "SubmissionSet01" in ctx and "SubmissionSet02" in ctx


@pytest.mark.parametrize(("old", "new", "words"), [
    ('<rim:ExtrinsicObject id="Document01"', "<rim:ExtrinsicObject", ["ExtrinsicObject", "no id"]),
    ('<rim:RegistryPackage id="SubmissionSet01"', "<rim:RegistryPackage", ["RegistryPackage", "no id"]),
    ('<rim:Association id="Association01"', "<rim:Association", ["Association", "no id"]),
    (f'associationType="{m.HAS_MEMBER}"', 'associationType="urn:example:Likes"',
     ["Association01", "urn:example:Likes"]),
    (f'associationType="{m.HAS_MEMBER}"', "", ["Association01", "no associationType"]),
    ('<rim:Association id="Association02"', '<rim:Association id="Document01"', ["Document01", "two objects"]),
    (f'classificationNode="{m.FOLDER_NODE}"', f'classificationNode="{m.SUBMISSION_SET_NODE}"',
     ["2 SubmissionSets"]),
    ("<rim:Value>20240105083000</rim:Value>", "<rim:Value>20240105083000</rim:Value><rim:Value>2025</rim:Value>",
     ["Document01", "creationTime", "exactly one"]),
    ('<rim:Slot name="size"><rim:ValueList><rim:Value>', '<rim:Slot name="size"><rim:ValueList><rim:Value>x',
     ["Document01", "size", "not an integer"]),
    ('<rim:Slot name="languageCode">', '<rim:Slot name="hash"><rim:ValueList><rim:Value>ab</rim:Value>'
     '</rim:ValueList></rim:Slot><rim:Slot name="languageCode">', ["Document01", "hash", "more than once"]),
])
def test_structural_errors_name_the_object(old, new, words):
    xml = _mutate(m.submit_objects_request(PID, folder=True).xml, old, new)
    ctx = metadata_error(xml).errors[0].context
    for word in words:
        assert word in ctx


def test_package_classified_both_ways():
    xml = m.submit_objects_request(PID, nested_classification=True).xml.decode()
    xml = xml.replace(
        "</rim:RegistryObjectList>",
        f'<rim:Classification id="x" classifiedObject="SubmissionSet01" classificationNode="{m.FOLDER_NODE}"/>'
        "</rim:RegistryObjectList>",
    )
    ctx = metadata_error(xml.encode()).errors[0].context
    assert "SubmissionSet01" in ctx and "both" in ctx


def test_second_class_code_is_an_error_in_a_submission_but_not_in_a_query_response():
    built = m.submit_objects_request(PID)
    text = built.xml.decode()
    start = text.index(f'classificationScheme="{m.DE_CLASS_CODE}"')
    start = text.rindex("<rim:Classification", 0, start)
    end = text.index("</rim:Classification>", start) + len("</rim:Classification>")
    xml = (text[:end] + text[start:end].replace('id="', 'id="dup', 1) + text[end:]).encode()
    assert "classCode" in metadata_error(xml).errors[0].context
    objects = ebrim.read_registry_objects(parse_xml(xml).find(f"{{{RIM}}}RegistryObjectList"))
    assert objects[0].class_code.code == m.CLASS_CODE.code


def test_reader_never_crashes_on_mangled_input():
    rng = random.Random(20240105)
    base = parse_xml(m.submit_objects_request(PID, documents=2, folder=True, replaces=m.new_uuid()).xml)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(400):
        doc = copy.deepcopy(base)
        elements = list(doc.iter())
        for _ in range(rng.randint(1, 4)):
            el = rng.choice(elements)
            action = rng.randrange(4)
            if action == 0 and el.getparent() is not None:
                el.getparent().remove(el)
            elif action == 1 and el.attrib:
                del el.attrib[rng.choice(list(el.attrib))]
            elif action == 2 and el.attrib:
                el.set(rng.choice(list(el.attrib)), rng.choice(["", "x", "urn:uuid:zz", "Document01", "-1"]))
            else:
                el.text = rng.choice([None, "", " ", "\u00e9\u00e8"])
        try:
            ebrim.read_submit_objects_request(doc)
            ebrim.read_registry_objects(doc)
            outcomes["ok"] += 1
        except XDSError as exc:
            assert all(e.code == ErrorCode.REGISTRY_METADATA_ERROR and e.context for e in exc.errors)
            outcomes["error"] += 1
    assert outcomes["ok"] and outcomes["error"]


# --- round trips --------------------------------------------------------------------------------


def full_document_entry(entry_uuid: str = "urn:uuid:0b3ea6a0-5b1c-4c0e-9a0e-6c8a3f0e7a11") -> DocumentEntry:
    return DocumentEntry(
        entry_uuid=entry_uuid,
        logical_uuid="urn:uuid:1c3ea6a0-5b1c-4c0e-9a0e-6c8a3f0e7a12",
        version="2",
        status=AvailabilityStatus.APPROVED,
        home_community_id="urn:oid:1.2.3.4",
        extra_slots=[Slot("urn:example:a", ["1", "<&>\"'\n\ttab"]), Slot("urn:example:empty", [])],
        unique_id="1.2.3.4.5.6.7",
        patient_id=Identifiable("PT-1", "1.2.3"),
        type=DocumentEntryType.ON_DEMAND,
        mime_type="application/dicom",
        title=LocalizedString("Rapport d'imagerie", "fr-FR", "UTF-8"),
        comments=LocalizedString("Thorax <CT> & \"more\""),
        class_code=Code("18748-4", "2.16.840.1.113883.6.1", LocalizedString("Diagnostic imaging study")),
        type_code=Code("18782-3", "2.16.840.1.113883.6.1", LocalizedString("Radiology study", "en-US")),
        format_code=Code("1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1", None),
        healthcare_facility_type_code=Code("22232009", "2.16.840.1.113883.6.96", LocalizedString("Hospital")),
        practice_setting_code=Code("394914008", "2.16.840.1.113883.6.96", LocalizedString("Radiology")),
        confidentiality_codes=[Code("N", "2.16.840.1.113883.5.25"), Code("R", "2.16.840.1.113883.5.25")],
        event_codes=[Code("CT", "1.2.840.10008.2.16.4", LocalizedString("CT")), Code("MR", "1.2.840.10008.2.16.4")],
        authors=[
            Author("^Smitty^Gerald^^^", ["Clinic^^^^^^^^^1.2.3"], ["Attending"], ["Radiology"], ["^^Internet^a@b.c"]),
            Author(None, ["Only Institution"]),
            Author(),
        ],
        creation_time="20240105083000",
        service_start_time="20240105",
        service_stop_time="2024010509",
        hash="da39a3ee5e6b4b0d3255bfef95601890afd80709",
        size=0,
        language_code="fr-FR",
        legal_authenticator="^Welby^Marcus^^^Dr^MD",
        source_patient_id=Identifiable("LOCAL-9", None, "HOSPITAL"),
        source_patient_info=["PID-3|LOCAL-9^^^HOSPITAL", "PID-5|Doe^Jane^^^"],
        repository_unique_id="1.2.3.99",
        uri="http://example.org/doc?a=1&b=2",
        reference_ids=[ReferenceId("ACC-1^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession"),
                       ReferenceId("1.2.840.99^^^^urn:ihe:iti:xds:2016:studyInstanceUID")],
        document_availability=ebrim.DOCUMENT_AVAILABILITY_ONLINE,
        limited_metadata=True,
    )


def full_submission_set() -> SubmissionSet:
    return SubmissionSet(
        entry_uuid="urn:uuid:2d3ea6a0-5b1c-4c0e-9a0e-6c8a3f0e7a13",
        logical_uuid="urn:uuid:2d3ea6a0-5b1c-4c0e-9a0e-6c8a3f0e7a13",
        version="1",
        status=AvailabilityStatus.APPROVED,
        home_community_id="urn:oid:1.2.3.4",
        extra_slots=[Slot("urn:example:ss", ["x"])],
        unique_id="1.2.3.4.5.8",
        source_id="1.2.3.4.5",
        patient_id=Identifiable("PT-1", "1.2.3"),
        submission_time="20240105090000",
        title=LocalizedString("Submission"),
        comments=LocalizedString("Comments", "en-GB"),
        content_type_code=Code("18748-4", "2.16.840.1.113883.6.1", LocalizedString("Imaging")),
        authors=[Author("^Dopplemeyer^Sherry^^^", ["Cleveland Clinic"], ["Surgeon"], ["Orthopedic"], [])],
        intended_recipients=["Hospital^^^^^^^^^1.2.3|^Welby^Marcus", "|^Jones^Ann"],
        limited_metadata=True,
    )


def full_folder() -> Folder:
    return Folder(
        entry_uuid="urn:uuid:3e3ea6a0-5b1c-4c0e-9a0e-6c8a3f0e7a14",
        logical_uuid="urn:uuid:3e3ea6a0-5b1c-4c0e-9a0e-6c8a3f0e7a14",
        version="1",
        status=AvailabilityStatus.APPROVED,
        home_community_id=None,
        extra_slots=[Slot("urn:example:f", ["y", "z"])],
        unique_id="1.2.3.4.5.9",
        patient_id=Identifiable("PT-1", "1.2.3"),
        title=LocalizedString("Episode"),
        comments=None,
        codes=[Code("A", "S1", LocalizedString("a")), Code("B", "S2")],
        last_update_time="20240105090001",
        limited_metadata=True,
    )


def full_association(kind: AssociationType = AssociationType.HAS_MEMBER) -> Association:
    return Association(
        entry_uuid="urn:uuid:4f3ea6a0-5b1c-4c0e-9a0e-6c8a3f0e7a15",
        logical_uuid="urn:uuid:4f3ea6a0-5b1c-4c0e-9a0e-6c8a3f0e7a15",
        version="1",
        status=AvailabilityStatus.SUBMITTED,
        home_community_id="urn:oid:1.2.3.4",
        extra_slots=[Slot("urn:example:assoc", ["q"])],
        type=kind,
        source_uuid="urn:uuid:2d3ea6a0-5b1c-4c0e-9a0e-6c8a3f0e7a13",
        target_uuid="urn:uuid:0b3ea6a0-5b1c-4c0e-9a0e-6c8a3f0e7a11",
        submission_set_status="Original",
        original_status=v.STATUS_SUBMITTED,
        new_status=v.STATUS_APPROVED,
        documentation=[] if kind == AssociationType.HAS_MEMBER else [
            Code("CORR", "1.3.6.1.4.1.21367.2026.9", LocalizedString("Correction", "en-GB")), Code("X", "S")],
    )


def _associations() -> list[Association]:
    out = []
    for i, t in enumerate(AssociationType):
        a = full_association(t)
        a.entry_uuid = a.logical_uuid = f"urn:uuid:00000000-0000-4000-8000-{i:012d}"
        out.append(a)
    return out


FULL_OBJECTS = [full_document_entry(), full_submission_set(), full_folder(), *_associations()]


@pytest.mark.parametrize("obj", FULL_OBJECTS, ids=lambda o: f"{type(o).__name__}-{getattr(o, 'type', '')}")
def test_round_trip_of_fully_populated_objects(obj):
    rol = ebrim.write_registry_object_list([obj])
    assert ebrim.read_registry_objects(rol) == [obj]
    # Through bytes and the hardened parser too, as a consumer receives it.
    assert ebrim.read_registry_objects(parse_xml(etree.tostring(rol))) == [obj]


def test_round_trip_of_minimal_objects():
    objects = [
        DocumentEntry(entry_uuid="d"),
        SubmissionSet(entry_uuid="s"),
        Folder(entry_uuid="f"),
        Association(entry_uuid="a", type=AssociationType.APND, source_uuid="d", target_uuid="x"),
    ]
    assert ebrim.read_registry_objects(ebrim.write_registry_object_list(objects)) == objects


def test_round_trip_of_a_submission_package():
    pkg = SubmissionPackage(
        submission_set=full_submission_set(),
        documents=[full_document_entry(), full_document_entry("urn:uuid:5a3ea6a0-5b1c-4c0e-9a0e-6c8a3f0e7a16")],
        folders=[full_folder()],
        associations=[full_association(), full_association(AssociationType.RPLC)],
    )
    pkg.associations[1].entry_uuid = "urn:uuid:6b3ea6a0-5b1c-4c0e-9a0e-6c8a3f0e7a17"
    sor = ebrim.write_submit_objects_request(pkg)
    assert etree.QName(sor).localname == "SubmitObjectsRequest"
    assert ebrim.read_submit_objects_request(sor) == pkg
    assert ebrim.read_submit_objects_request(parse_xml(etree.tostring(sor))) == pkg


def test_message_read_write_read_is_stable():
    built = m.submit_objects_request(PID, documents=3, folder=True, replaces=m.new_uuid(), relationship="XFRM_RPLC",
                                     reference_ids=["r^^^&1.2&ISO^urn:ihe:iti:xds:2013:order"])
    pkg = read(built.xml)
    assert ebrim.read_submit_objects_request(ebrim.write_submit_objects_request(pkg)) == pkg


# --- fragments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", FULL_OBJECTS[:4], ids=lambda o: type(o).__name__)
def test_fragment_is_deterministic_and_standalone(obj):
    frag = ebrim.object_fragment(obj)
    assert frag == ebrim.object_fragment(copy.deepcopy(obj))
    assert not frag.startswith(b"<?xml")
    root = parse_xml(frag)  # well-formed on its own, rim declared on the root
    assert root.nsmap == {"rim": RIM}
    ids = [e.get("id") for e in root.iter(f"{{{RIM}}}Classification", f"{{{RIM}}}ExternalIdentifier")]
    assert ids or isinstance(obj, Association)
    assert all(i.startswith("urn:uuid:") for i in ids) and len(set(ids)) == len(ids)
    assert etree.tostring(ebrim.write_object(obj)) == frag


def test_fragment_ids_depend_on_the_owner():
    a = full_document_entry()
    b = full_document_entry("urn:uuid:7c3ea6a0-5b1c-4c0e-9a0e-6c8a3f0e7a18")
    ids_a = {e.get("id") for e in parse_xml(ebrim.object_fragment(a)).iter(f"{{{RIM}}}Classification")}
    ids_b = {e.get("id") for e in parse_xml(ebrim.object_fragment(b)).iter(f"{{{RIM}}}Classification")}
    assert not ids_a & ids_b


def test_fragments_spliced_into_a_query_response():
    fragments = [ebrim.object_fragment(o) for o in FULL_OBJECTS]
    response = (
        f'<query:AdhocQueryResponse xmlns:query="{QUERY}" xmlns:rim="{RIM}"'
        ' status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success">'
    ).encode() + ebrim.registry_object_list_bytes(fragments) + b"</query:AdhocQueryResponse>"
    root = parse_xml(response)
    assert ebrim.read_registry_objects(root) == FULL_OBJECTS
    # Inside a RegistryObjectList that binds rim to another prefix (or to the default namespace).
    other = f'<ns2:RegistryObjectList xmlns:ns2="{RIM}">'.encode() + b"".join(fragments) + b"</ns2:RegistryObjectList>"
    assert ebrim.read_registry_objects(parse_xml(other)) == FULL_OBJECTS
    default = f'<RegistryObjectList xmlns="{RIM}">'.encode() + b"".join(fragments) + b"</RegistryObjectList>"
    assert ebrim.read_registry_objects(parse_xml(default)) == FULL_OBJECTS


def test_fragment_refuses_characters_xml_cannot_carry():
    with pytest.raises(ValueError, match="XML cannot carry"):
        ebrim.object_fragment(DocumentEntry(entry_uuid="d", hash="ab\x00cd"))


def test_sub_ids_are_uuid5():
    import uuid

    assert ebrim.sub_id("Document01", v.DE_CLASS_CODE, 2) == \
        f"urn:uuid:{uuid.uuid5(ebrim._ID_NAMESPACE, f'Document01|{v.DE_CLASS_CODE}|2')}"


def test_read_object_refs():
    xml = (
        f'<query:AdhocQueryResponse xmlns:query="{QUERY}" xmlns:rim="{RIM}" status="x"><rim:RegistryObjectList>'
        '<rim:ObjectRef id="urn:uuid:a"/><rim:ObjectRef id="urn:uuid:b" home="urn:oid:1.2"/><rim:ObjectRef/>'
        "</rim:RegistryObjectList></query:AdhocQueryResponse>"
    ).encode()
    root = parse_xml(xml)
    assert ebrim.read_object_refs(root) == ["urn:uuid:a", "urn:uuid:b"]
    assert ebrim.read_object_refs(root.find(f"{{{RIM}}}RegistryObjectList")) == ["urn:uuid:a", "urn:uuid:b"]
    assert ebrim.read_registry_objects(root) == []
    assert ebrim.read_object_refs(parse_xml(f'<x xmlns:rs="{RS}"/>'.encode())) == []


# --- the published schemas ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def schemas() -> dict[str, etree.XMLSchema]:
    return {name: m.reference_schema(name) for name in ("lcm", "query")}


@pytest.mark.needs_shared("xsd")
def test_written_submission_is_valid_against_lcm_xsd(schemas):
    pkg = SubmissionPackage(
        submission_set=full_submission_set(),
        documents=[full_document_entry()],
        folders=[full_folder()],
        associations=_associations(),
    )
    schemas["lcm"].assertValid(ebrim.write_submit_objects_request(pkg))
    built = m.submit_objects_request(PID, documents=2, folder=True)
    schemas["lcm"].assertValid(ebrim.write_submit_objects_request(read(built.xml)))


@pytest.mark.needs_shared("xsd")
def test_spliced_query_response_is_valid_against_query_xsd(schemas):
    response = (
        f'<query:AdhocQueryResponse xmlns:query="{QUERY}"'
        ' status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success">'
    ).encode() + ebrim.registry_object_list_bytes(ebrim.object_fragment(o) for o in FULL_OBJECTS) + \
        b"</query:AdhocQueryResponse>"
    schemas["query"].assertValid(etree.fromstring(response))


def test_association_documentation_is_read_nested_or_top_level():
    """NIST-shaped: the Association Documentation classification inside the Association, or beside it."""
    built = m.submit_objects_request(PID, replaces=m.new_uuid(), relationship="APND")
    nested = (f'<rim:Classification id="c1" classificationScheme="{v.ASSOCIATION_DOCUMENTATION}" '
              'classifiedObject="Association02" nodeRepresentation="ADD"><rim:Slot name="codingScheme">'
              '<rim:ValueList><rim:Value>1.2.3</rim:Value></rim:ValueList></rim:Slot><rim:Name>'
              '<rim:LocalizedString value="Addendum"/></rim:Name></rim:Classification>')
    for xml in (built.xml.replace(b"</rim:Association></rim:RegistryObjectList>",
                                  nested.encode() + b"</rim:Association></rim:RegistryObjectList>"),
                built.xml.replace(b"</rim:RegistryObjectList>", nested.encode() + b"</rim:RegistryObjectList>")):
        pkg = read(xml)
        apnd = next(a for a in pkg.associations if a.type == AssociationType.APND)
        assert apnd.documentation == [Code("ADD", "1.2.3", LocalizedString("Addendum"))]
        written = ebrim.object_fragment(apnd)
        assert v.ASSOCIATION_DOCUMENTATION.encode() in written
        assert ebrim.read_registry_objects(ebrim.write_registry_object_list([apnd])) == [apnd]
