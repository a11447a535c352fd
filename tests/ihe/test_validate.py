"""XDS metadata validation: one test (at least) per rule, showing the IHE error code and that the
codeContext names the object (entryUUID, uniqueId) and the attribute; a fully valid package passes.

Model objects are built directly (no ebRIM), with values shaped like the NIST toolkit's messages.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ihe.errors import RegistryError
from ihe.metadata import vocabulary as v
from ihe.metadata.codes import CodeList, load_code_list
from ihe.metadata.model import (
    Association,
    AssociationType,
    Author,
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
from ihe.metadata.validate import (
    cx_problem,
    document_unique_id_problem,
    is_dtm,
    is_oid,
    validate_document_entry,
    validate_folder,
    validate_submission,
    validate_submission_set,
    xcn_problem,
    xon_problem,
    xtn_problem,
)

MD = "XDSRegistryMetadataError"
PID_MISMATCH = "XDSPatientIdDoesNotMatch"

AUTHORITY = "1.3.6.1.4.1.21367.13.20.1000"
PATIENT = Identifiable("P20240105", AUTHORITY)
OTHER_PATIENT = Identifiable("P99999", AUTHORITY)
EXISTING_DOC = "urn:uuid:7b2f9a52-3d0c-4d5e-9f3a-1c2b3d4e5f60"
EXISTING_FOLDER = "urn:uuid:0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
EXAMPLE_CODES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "codes.toml"


def code(value: str, scheme: str, display: str | None = "display") -> Code:
    return Code(value, scheme, LocalizedString(display) if display is not None else None)


def document(n: int) -> DocumentEntry:
    return DocumentEntry(
        entry_uuid=f"Document0{n}",
        unique_id=f"1.3.6.1.4.1.21367.2024.99.{n}",
        patient_id=PATIENT,
        mime_type="text/plain",
        title=LocalizedString("Radiology report"),
        class_code=code("18748-4", "2.16.840.1.113883.6.1", "Diagnostic imaging study"),
        type_code=code("371527006", "2.16.840.1.113883.6.96", "Radiology report"),
        format_code=code("urn:ihe:rad:TEXT", "1.3.6.1.4.1.19376.1.2.3", "Radiology report text"),
        healthcare_facility_type_code=code("22232009", "2.16.840.1.113883.6.96", "Hospital"),
        practice_setting_code=code("394914008", "2.16.840.1.113883.6.96", "Radiology"),
        confidentiality_codes=[code("N", "2.16.840.1.113883.5.25", "normal")],
        event_codes=[code("CT", "1.2.840.10008.2.16.4", "Computed Tomography")],
        authors=[Author(
            person="^Smitty^Gerald^^^",
            institutions=["Cleveland Clinic^^^^^^^^^1.2.3.4.5.6.7.8.9.1789.45", "Parma Community"],
            roles=["Attending"],
            specialties=["Radiology"],
            telecoms=["^^Internet^gerald.smitty@example.org"],
        )],
        creation_time="20240105083000",
        service_start_time="200401050800",
        service_stop_time="200401050830",
        hash="da39a3ee5e6b4b0d3255bfef95601890afd80709",
        size=0,
        language_code="en-GB",
        legal_authenticator="^Welby^Marcus^^^Dr^MD",
        source_patient_id=Identifiable("89765a87b", "1.3.4.5"),
        source_patient_info=["PID-3|pid1^^^&1.2.3&ISO", "PID-5|Doe^John^^^", "PID-7|19560527", "PID-8|M"],
        repository_unique_id="1.3.6.1.4.1.21367.2010.1.2.1125",
        reference_ids=[ReferenceId("IDC027-a^^^&1.3.6.1.4.1.21367.13.40.111&ISO^urn:ihe:iti:xds:2013:accession")],
    )


def has_member(aid: str, source: str, target: str, status: str | None = None) -> Association:
    return Association(
        entry_uuid=aid, type=AssociationType.HAS_MEMBER, source_uuid=source, target_uuid=target,
        submission_set_status=status,
    )


def valid_package() -> SubmissionPackage:
    """Two documents (the first replacing an existing one), a new folder holding the second, and a
    reference to an existing document: every association kind a Document Source sends."""
    ss = SubmissionSet(
        entry_uuid="SubmissionSet01",
        unique_id="1.3.6.1.4.1.21367.2024.99.100",
        source_id="1.3.6.1.4.1.21367.2009.1.2.1",
        patient_id=PATIENT,
        submission_time="20240105083500",
        title=LocalizedString("Imaging submission"),
        content_type_code=code("18748-4", "2.16.840.1.113883.6.1", "Diagnostic imaging study"),
        authors=[Author(person="^Dopplemeyer^Sherry^^^", institutions=["Cleveland Clinic"], roles=["Primary Surgeon"])],
        intended_recipients=[
            "Some Hospital^^^^^^^^^1.2.3.9.1789.45|^Wel^Marcus^^^Dr^MD|^^Internet^mwel@healthcare.example.org",
        ],
    )
    folder = Folder(
        entry_uuid="Folder01",
        unique_id="1.3.6.1.4.1.21367.2024.99.200",
        patient_id=PATIENT,
        title=LocalizedString("Imaging episode"),
        codes=[code("ImagingEpisode", "1.3.6.1.4.1.21367.100.1", "Imaging episode")],
    )
    associations = [
        has_member("Association01", "SubmissionSet01", "Document01", "Original"),
        has_member("Association02", "SubmissionSet01", "Document02", "Original"),
        has_member("Association03", "SubmissionSet01", "Folder01"),
        has_member("Association04", "Folder01", "Document02"),
        has_member("Association05", "SubmissionSet01", "Association04"),
        Association(entry_uuid="Association06", type=AssociationType.RPLC, source_uuid="Document01",
                    target_uuid=EXISTING_DOC),
        has_member("Association07", "SubmissionSet01", EXISTING_DOC.replace("7b2f", "8c3e"), "Reference"),
    ]
    return SubmissionPackage(ss, [document(1), document(2)], [folder], associations)


def single(errors: list[RegistryError], code: str, *fragments: str, location: str | None = None) -> RegistryError:
    """The one finding in ``errors``: with ``code`` and a codeContext containing every fragment."""
    assert len(errors) == 1, "\n".join(f"{e.code}: {e.context}" for e in errors)
    return matching(errors, code, *fragments, location=location)


def matching(errors: list[RegistryError], code: str, *fragments: str, location: str | None = None) -> RegistryError:
    found = [e for e in errors if e.code == code and all(f in e.context for f in fragments)]
    assert found, f"no {code} with {fragments} in:\n" + "\n".join(f"{e.code}: {e.context}" for e in errors)
    if location is not None:
        assert found[0].location == location
    return found[0]


def replace_document(package: SubmissionPackage, index: int = 0, **changes) -> SubmissionPackage:
    documents = list(package.documents)
    documents[index] = dataclasses.replace(documents[index], **changes)
    return dataclasses.replace(package, documents=documents)


# --- a valid package ---------------------------------------------------------------------------------


def test_valid_package_has_no_findings() -> None:
    assert validate_submission(valid_package()) == []


def test_valid_package_passes_the_example_code_list() -> None:
    assert validate_submission(valid_package(), code_list=load_code_list(EXAMPLE_CODES)) == []


def test_nist_style_minimal_values_are_accepted() -> None:
    """Values as in the reference ITI-41 captures: author id as free text, lower-case language tag,
    non-OID coding schemes, DICOM UIDs as uniqueIds, documents without hash/size (ITI-41)."""
    de = dataclasses.replace(
        document(1),
        authors=[Author(person="Lexmark Document Author")],
        language_code="en-us",
        event_codes=[code("RSNA2008 eventCodeList", "RSNA2008 eventCodeList"), code("T-D3000", "SNOMED-RT")],
        practice_setting_code=code("General Medicine", "Connect-a-thon practiceSettingCodes"),
        unique_id="1.2.840.114158.332609592172.20160623221738902.1.0.173871",
        mime_type="application/dicom",
        hash=None, size=None, repository_unique_id=None,
        legal_authenticator=None, reference_ids=[], source_patient_info=[],
    )
    assert validate_document_entry(de, require_repository_attributes=False) == []


def test_validator_does_not_modify_the_package() -> None:
    package = valid_package()
    before = repr(package)
    validate_submission(package, code_list=load_code_list(EXAMPLE_CODES))
    assert repr(package) == before


# --- required attributes -------------------------------------------------------------------------------

DOCUMENT_REQUIRED = {
    "class_code": "classCode",
    "type_code": "typeCode",
    "format_code": "formatCode",
    "healthcare_facility_type_code": "healthcareFacilityTypeCode",
    "practice_setting_code": "practiceSettingCode",
    "confidentiality_codes": "confidentialityCode",
    "creation_time": "creationTime",
    "language_code": "languageCode",
    "mime_type": "mimeType",
    "patient_id": "patientId",
    "source_patient_id": "sourcePatientId",
    "unique_id": "uniqueId",
    "hash": "hash",
    "size": "size",
    "repository_unique_id": "repositoryUniqueId",
}


@pytest.mark.parametrize(("field", "attribute"), DOCUMENT_REQUIRED.items())
def test_document_entry_required_attribute(field: str, attribute: str) -> None:
    empty = [] if field == "confidentiality_codes" else None
    package = replace_document(valid_package(), 1, **{field: empty})
    errors = validate_submission(package)
    e = single(errors, MD, "DocumentEntry Document02", f"required attribute {attribute} is missing",
               location="Document02")
    if field != "unique_id":
        assert "(uniqueId 1.3.6.1.4.1.21367.2024.99.2)" in e.context


@pytest.mark.parametrize("field", ["hash", "size", "repository_unique_id"])
def test_repository_attributes_are_optional_for_itI41_but_still_checked(field: str) -> None:
    de = dataclasses.replace(document(1), **{field: None})
    assert validate_document_entry(de, require_repository_attributes=False) == []
    assert len(validate_document_entry(de)) == 1
    bad = {"hash": "abc", "size": -1, "repository_unique_id": "repo-1"}[field]
    errors = validate_document_entry(dataclasses.replace(document(1), **{field: bad}),
                                     require_repository_attributes=False)
    attribute = {"hash": "hash", "size": "size", "repository_unique_id": "repositoryUniqueId"}[field]
    single(errors, MD, "Document01", f"{attribute} '{bad}'")


SUBMISSION_SET_REQUIRED = {
    "unique_id": "uniqueId",
    "source_id": "sourceId",
    "patient_id": "patientId",
    "submission_time": "submissionTime",
    "content_type_code": "contentTypeCode",
}


@pytest.mark.parametrize(("field", "attribute"), SUBMISSION_SET_REQUIRED.items())
def test_submission_set_required_attribute(field: str, attribute: str) -> None:
    package = valid_package()
    package.submission_set = dataclasses.replace(package.submission_set, **{field: None})
    single(validate_submission(package), MD, "SubmissionSet SubmissionSet01",
           f"required attribute {attribute} is missing", location="SubmissionSet01")


def test_submission_set_author_is_r2_but_checked_when_present() -> None:
    ss = dataclasses.replace(valid_package().submission_set, authors=[], intended_recipients=[])
    assert validate_submission_set(ss) == []
    ss = dataclasses.replace(ss, authors=[Author(roles=["Attending"])])
    single(validate_submission_set(ss), MD, "SubmissionSet01",
           "author #1 has none of authorPerson, authorInstitution, authorTelecommunication")


FOLDER_REQUIRED = {"unique_id": "uniqueId", "patient_id": "patientId", "title": "title", "codes": "codeList"}


@pytest.mark.parametrize(("field", "attribute"), FOLDER_REQUIRED.items())
def test_folder_required_attribute(field: str, attribute: str) -> None:
    package = valid_package()
    package.folders = [dataclasses.replace(package.folders[0], **{field: [] if field == "codes" else None})]
    single(validate_submission(package), MD, "Folder Folder01", f"required attribute {attribute} is missing",
           location="Folder01")


def test_folder_title_must_not_be_blank() -> None:
    folder = dataclasses.replace(valid_package().folders[0], title=LocalizedString("  "))
    single(validate_folder(folder), MD, "Folder01", "title")


def test_entry_uuid_is_required_and_well_formed() -> None:
    single(validate_document_entry(dataclasses.replace(document(1), entry_uuid="")), MD, "entryUUID", "missing")
    single(validate_document_entry(dataclasses.replace(document(1), entry_uuid="urn:uuid:not-a-uuid")),
           MD, "entryUUID 'urn:uuid:not-a-uuid' is not a valid urn:uuid")
    single(validate_document_entry(dataclasses.replace(document(1), entry_uuid="Document 01")), MD, "whitespace")
    uuid = "urn:uuid:2B3C4D5E-6F70-4182-93A4-B5C6D7E8F901"
    assert validate_document_entry(dataclasses.replace(document(1), entry_uuid=uuid)) == []


def test_on_demand_entries_are_not_accepted_by_register() -> None:
    de = dataclasses.replace(document(1), type=DocumentEntryType.ON_DEMAND)
    single(validate_document_entry(de), MD, "Document01", "objectType", "On-Demand")
    assert validate_document_entry(de, allow_on_demand=True) == []
    single(validate_document_entry(dataclasses.replace(document(1), type="urn:uuid:bogus")), MD, "objectType")
    single(validate_document_entry(dataclasses.replace(document(1), type=None)), MD,
           "required attribute objectType is missing")


# --- formats ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("creation_time", "2004x", "creationTime '2004x' is not a valid DTM"),
        ("creation_time", "20041301", "creationTime '20041301'"),  # month 13
        ("creation_time", "20040230", "creationTime '20040230'"),  # 30 February
        ("creation_time", "2004-01-05", "creationTime '2004-01-05'"),
        ("creation_time", " 20040105", "creationTime ' 20040105'"),
        ("service_start_time", "200401051", "serviceStartTime"),
        ("service_stop_time", "yesterday", "serviceStopTime"),
        ("hash", "da39a3ee5e6b4b0d3255bfef95601890afd8070", "hash"),  # 39 characters
        ("hash", "zz39a3ee5e6b4b0d3255bfef95601890afd80709", "hash"),
        ("size", -1, "size '-1' is not a non-negative integer"),
        ("size", "12", "size '12'"),
        ("mime_type", "text", "mimeType 'text'"),
        ("mime_type", "text /plain", "mimeType"),
        ("language_code", "en_GB", "languageCode 'en_GB'"),
        ("language_code", "English (UK)", "languageCode"),
        ("unique_id", "1.2.3^", "uniqueId '1.2.3^'"),
        ("unique_id", "abc.def", "uniqueId 'abc.def'"),
        ("unique_id", "1.2.3^a^b", "uniqueId"),
        ("unique_id", "1.2." + "1" * 130, "longer than 128"),
        ("repository_unique_id", "1.2.03", "repositoryUniqueId '1.2.03' is not an OID"),
        ("repository_unique_id", "1." + "2" * 64, "repositoryUniqueId"),
        ("patient_id", Identifiable("P1", None, "HOSPITAL"), "patientId 'P1^^^HOSPITAL' is not a valid patient id"),
        ("patient_id", Identifiable("P1", AUTHORITY, "NS"), "patientId"),
        ("patient_id", Identifiable("P1", "hospital.example"), "is not an OID"),
        ("patient_id", Identifiable("", AUTHORITY), "patientId"),
        ("source_patient_id", Identifiable("89765a87b"), "sourcePatientId '89765a87b'"),
        ("legal_authenticator", "^^^^^Dr", "legalAuthenticator"),
        ("source_patient_info", ["Doe^John"], "sourcePatientInfo value 'Doe^John'"),
        ("title", LocalizedString("x" * 129), "title is longer than 128"),
        ("reference_ids", [ReferenceId("IDC027-a^^^&1.2.3&ISO")], "referenceIdList"),
        ("home_community_id", "1.2.3", "homeCommunityId '1.2.3'"),
    ],
)
def test_document_entry_formats(field: str, value: object, fragment: str) -> None:
    package = replace_document(valid_package(), 0, **{field: value})
    errors = validate_submission(package)
    if field == "patient_id":  # a malformed id also differs from the SubmissionSet's
        matching(errors, PID_MISMATCH, "DocumentEntry Document01")
        errors = [e for e in errors if e.code == MD]
    e = single(errors, MD, "DocumentEntry Document01", fragment, location="Document01")
    if field != "unique_id":
        assert "(uniqueId 1.3.6.1.4.1.21367.2024.99.1)" in e.context


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hash", "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709"),  # any case
        ("unique_id", "1.3.6.1.4.1.21367.2024.99.1^20240105-1"),  # OID^extension
        ("unique_id", "2.25.329800735698586629295641978511506172918"),  # UUID-derived OID
        ("mime_type", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ("language_code", "cy"),
        ("creation_time", "2004"),
        ("home_community_id", "urn:oid:1.3.6.1.4.1.21367.13.70.1"),
    ],
)
def test_document_entry_accepted_forms(field: str, value: object) -> None:
    assert validate_submission(replace_document(valid_package(), 0, **{field: value})) == []


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("source_id", "1.2.abc", "sourceId '1.2.abc' is not an OID"),
        ("unique_id", "01.2", "uniqueId '01.2' is not an OID"),
        ("unique_id", "1.3.6.1.4.1.21367.2024.99.100^x", "uniqueId"),  # extensions only for documents
        ("submission_time", "20241", "submissionTime '20241' is not a valid DTM"),
        ("patient_id", Identifiable("P20240105", "1..2"), "patientId"),
        ("intended_recipients", ["a|b|c|d"], "intendedRecipient 'a|b|c|d'"),
        ("intended_recipients", ["|"], "intendedRecipient"),
        ("intended_recipients", ["|^^^^"], "invalid XCN part"),
    ],
)
def test_submission_set_formats(field: str, value: object, fragment: str) -> None:
    package = valid_package()
    package.submission_set = dataclasses.replace(package.submission_set, **{field: value})
    errors = validate_submission(package)
    if field == "patient_id":  # also differs from the documents' and folder's patientId
        matching(errors, MD, "SubmissionSet SubmissionSet01", fragment, location="SubmissionSet01")
    else:
        single(errors, MD, "SubmissionSet SubmissionSet01", fragment, location="SubmissionSet01")


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("unique_id", "1.2.3.x", "uniqueId '1.2.3.x' is not an OID"),
        ("last_update_time", "2024-01-05", "lastUpdateTime"),
        ("codes", [code("ImagingEpisode", "")], "codeList 'ImagingEpisode' has no codingScheme"),
    ],
)
def test_folder_formats(field: str, value: object, fragment: str) -> None:
    package = valid_package()
    package.folders = [dataclasses.replace(package.folders[0], **{field: value})]
    single(validate_submission(package), MD, "Folder Folder01", fragment, location="Folder01")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (code("", "2.16.840.1.113883.6.1"), "classCode has an empty code"),
        (code("18748-4", ""), "classCode '18748-4' has no codingScheme"),
        (code("18748-4", "2.16.840.1.113883.6.1", None),
         "classCode '18748-4' (scheme 2.16.840.1.113883.6.1) has no display"),
        (code("18748-4", "2.16.840.1.113883.6.1", " "), "has no display name"),
    ],
)
def test_codes_need_code_scheme_and_display_name(value: Code, fragment: str) -> None:
    single(validate_submission(replace_document(valid_package(), 0, class_code=value)), MD, "Document01", fragment)


def test_each_confidentiality_and_event_code_is_checked() -> None:
    package = replace_document(valid_package(), 0, event_codes=[code("CT", "1.2.840.10008.2.16.4"), code("MR", "")])
    single(validate_submission(package), MD, "Document01", "eventCodeList 'MR' has no codingScheme")
    package = replace_document(valid_package(), 0, confidentiality_codes=[code("N", "2.16.840.1.113883.5.25", None)])
    single(validate_submission(package), MD, "Document01", "confidentialityCode 'N'", "no display name")


@pytest.mark.parametrize(
    ("author", "fragment"),
    [
        (Author(roles=["Attending"], specialties=["Radiology"]), "author #1 has none of authorPerson"),
        (Author(person="^^^^^Dr"), "authorPerson '^^^^^Dr' is not a valid XCN"),
        (Author(person="123^Smith^^^^^^^&not-an-oid&ISO"), "assigning authority (component 9)"),
        (Author(institutions=["^^^^^^^^^1.2.3"]), "is not a valid XON: needs an organization name"),
        (Author(institutions=["Some Hospital^^^^^^^^^not-an-oid"]), "organization identifier (component 10)"),
        (Author(institutions=["Some Hospital^^^^^NS&1.2.3&ISO"]), "must not have a namespace"),
        (Author(institutions=["Some Hospital^L^1234"]), "component 2 is valued"),
        (Author(telecoms=["^^Internet^"]), "authorTelecommunication '^^Internet^' is not a valid XTN"),
        (Author(telecoms=["^WPN^PH^"]), "needs a local number"),
        (Author(telecoms=["gerald@example.org"]), "equipment type"),
        (Author(person="^Smitty^Gerald", roles=[""]), "authorRole has an empty value"),
    ],
)
def test_author_slots_are_well_formed(author: Author, fragment: str) -> None:
    errors = validate_submission(replace_document(valid_package(), 0, authors=[author]))
    single(errors, MD, "DocumentEntry Document01", fragment, location="Document01")


def test_format_helpers() -> None:
    assert is_oid("1.3.6.1.4.1.21367.13.20.1000") and is_oid("2.25.1") and is_oid("0.0")
    assert not any(is_oid(x) for x in ("", None, "1", "1.", ".1", "3.1", "1.02", "1.2\n", "1.٢"))
    assert is_dtm("20240105083000") and is_dtm("2024")
    assert not any(is_dtm(x) for x in ("", None, "20240105\n", "202401050830001", "2024010"))
    assert cx_problem("P1^^^&1.2.3&ISO") is None
    for bad in ("P1^^^&1.2.3", "P1^^^NS&1.2.3&ISO", "P1^2^^&1.2.3&ISO", "P1^^^&1.2.3&ISO^PI", "^^^&1.2.3&ISO",
                "P1^^^&1.02.3&ISO", " P1^^^&1.2.3&ISO"):
        assert cx_problem(bad), bad
    assert document_unique_id_problem("1.2.3^abc") is None and document_unique_id_problem("1.2.3^a b")
    assert xcn_problem("Lexmark Document Author") is None and xcn_problem("123^^^^^^^^&1.2.3&ISO") is None
    assert xon_problem("Cleveland Clinic") is None and xon_problem("Some Hospital^^^^^&1.2.3&ISO^^^^45") is None
    assert xtn_problem("^PRN^PH^^^555^5551234") is None and xtn_problem("^^PH^^^^^^^^^+15555551234") is None
    assert xtn_problem("^NET^Internet^a@example.org") is None and xtn_problem("^WPN^Internet^a@example.org")


# --- identity, patient and uniqueness ---------------------------------------------------------------------


def test_patient_id_must_match_the_submission_set() -> None:
    errors = validate_submission(replace_document(valid_package(), 1, patient_id=OTHER_PATIENT))
    e = single(errors, PID_MISMATCH, "DocumentEntry Document02 (uniqueId 1.3.6.1.4.1.21367.2024.99.2)",
               f"patientId 'P99999^^^&{AUTHORITY}&ISO' does not match", f"'P20240105^^^&{AUTHORITY}&ISO'",
               location="Document02")
    assert e.is_error


def test_folder_patient_id_must_match_the_submission_set() -> None:
    package = valid_package()
    package.folders = [dataclasses.replace(package.folders[0], patient_id=OTHER_PATIENT)]
    single(validate_submission(package), PID_MISMATCH, "Folder Folder01", "patientId", location="Folder01")


def test_unique_ids_are_unique_within_the_message() -> None:
    package = replace_document(valid_package(), 1, unique_id="1.3.6.1.4.1.21367.2024.99.1")
    single(validate_submission(package), MD, "DocumentEntry Document02",
           "uniqueId '1.3.6.1.4.1.21367.2024.99.1' is also used by DocumentEntry Document01", location="Document02")
    package = valid_package()
    package.folders = [dataclasses.replace(package.folders[0], unique_id=package.submission_set.unique_id)]
    single(validate_submission(package), MD, "Folder Folder01", "is also used by SubmissionSet SubmissionSet01")


def test_entry_uuids_are_unique_within_the_message() -> None:
    package = valid_package()
    package.associations[6] = dataclasses.replace(package.associations[6], entry_uuid="Association01")
    single(validate_submission(package), MD, "Association Association01 (HasMember SubmissionSet01 -> urn:uuid:",
           "entryUUID 'Association01' is also used by",
           "Association Association01 (HasMember SubmissionSet01 -> Document01)")


# --- associations -----------------------------------------------------------------------------------------


def with_association(package: SubmissionPackage, association: Association, replace: int | None = None):
    if replace is None:
        package.associations.append(association)
    else:
        package.associations[replace] = association
    return package


def test_association_type_must_be_known() -> None:
    package = with_association(valid_package(), Association(
        entry_uuid="Association09", type="urn:example:AssociationType:Likes", source_uuid="Document01",
        target_uuid=EXISTING_DOC))
    single(validate_submission(package), MD, "Association Association09",
           "associationType 'urn:example:AssociationType:Likes' is not an XDS association type",
           location="Association09")


def test_every_document_and_folder_is_a_member_of_the_submission_set() -> None:
    package = valid_package()
    del package.associations[1]  # SubmissionSet01 -> Document02
    single(validate_submission(package), MD, "DocumentEntry Document02 (uniqueId",
           "is not a member of the SubmissionSet", location="Document02")
    package = valid_package()
    del package.associations[2]  # SubmissionSet01 -> Folder01
    single(validate_submission(package), MD, "Folder Folder01", "is not a member of the SubmissionSet")


@pytest.mark.parametrize(
    ("status", "fragment"),
    [(None, "SubmissionSetStatus must be Original for a DocumentEntry of this submission (found none)"),
     ("Reference", "SubmissionSetStatus must be Original"),
     ("original", "(found original)")],
)
def test_submission_set_status_original_for_new_documents(status: str | None, fragment: str) -> None:
    package = with_association(valid_package(), has_member("Association01", "SubmissionSet01", "Document01", status), 0)
    single(validate_submission(package), MD, "Association Association01 (HasMember SubmissionSet01 -> Document01)",
           fragment, location="Association01")


@pytest.mark.parametrize("status", [None, "Original"])
def test_submission_set_status_reference_for_existing_entries(status: str | None) -> None:
    package = with_association(valid_package(), has_member("Association07", "SubmissionSet01", EXISTING_DOC, status), 6)
    single(validate_submission(package), MD, "Association07", "SubmissionSetStatus must be Reference for an existing")


@pytest.mark.parametrize(
    ("source", "target", "fragment"),
    [
        ("Document01", "Document02", "HasMember source must be the SubmissionSet or a Folder, not a DocumentEntry"),
        ("Association04", "Document01", "not an Association"),
        ("Folder01", "SubmissionSet01", "a Folder's HasMember must target a DocumentEntry, not a SubmissionSet"),
        ("Folder01", "Association01", "not an Association"),
        (EXISTING_FOLDER, "Folder01", "not a Folder"),
        ("SubmissionSet01", "SubmissionSet01", "cannot be a member of itself"),
        ("SubmissionSet01", "Association06", "may only hold a Folder's HasMember association"),
        ("SubmissionSet01", "Association03", "may only hold a Folder's HasMember association"),
        ("Folder01", "Document99", "targetObject 'Document99' is neither an object of this submission nor a urn:uuid"),
        ("Folder99", "Document01", "sourceObject 'Folder99' is neither an object"),
    ],
)
def test_has_member_shapes(source: str, target: str, fragment: str) -> None:
    package = with_association(valid_package(), has_member("Association09", source, target))
    single(validate_submission(package), MD, "Association Association09 (HasMember", fragment,
           location="Association09")


def test_document_added_to_an_existing_folder_is_valid() -> None:
    package = valid_package()
    package.associations += [
        has_member("Association10", EXISTING_FOLDER, "Document01"),
        has_member("Association11", "SubmissionSet01", "Association10"),
    ]
    assert validate_submission(package) == []


RELATIONSHIPS = {
    "RPLC": AssociationType.RPLC, "APND": AssociationType.APND, "XFRM": AssociationType.XFRM,
    "XFRM_RPLC": AssociationType.XFRM_RPLC, "signs": AssociationType.SIGNS,
    "IsSnapshotOf": AssociationType.IS_SNAPSHOT_OF,
}


@pytest.mark.parametrize("kind", RELATIONSHIPS)
def test_relationship_from_a_new_document_to_an_existing_one_is_valid(kind: str) -> None:
    package = with_association(valid_package(), Association(
        entry_uuid="Association06", type=RELATIONSHIPS[kind], source_uuid="Document01",
        target_uuid=EXISTING_DOC), 5)
    assert validate_submission(package) == []


@pytest.mark.parametrize(
    ("source", "target", "fragment"),
    [
        (EXISTING_DOC.replace("7b2f", "9d4f"), EXISTING_DOC,
         "APND source must be a DocumentEntry of this submission, not an entry outside this submission"),
        ("Folder01", EXISTING_DOC, "APND source must be a DocumentEntry of this submission, not a Folder"),
        ("Document01", "Document02", "APND target must be an existing DocumentEntry (urn:uuid), not a DocumentEntry"),
        ("Document01", "Document07", "targetObject 'Document07' is neither an object of this submission"),
        ("Document01", "urn:uuid:1234", "targetObject 'urn:uuid:1234'"),
    ],
)
def test_relationship_shapes(source: str, target: str, fragment: str) -> None:
    package = with_association(valid_package(), Association(
        entry_uuid="Association06", type=AssociationType.APND, source_uuid=source, target_uuid=target), 5)
    single(validate_submission(package), MD, f"Association Association06 (APND {source} -> {target})", fragment,
           location="Association06")


# --- extra metadata -----------------------------------------------------------------------------------------


def test_extra_metadata_is_legal_and_kept() -> None:
    """ITI TF-3 4.1.14: urn: slots XDS does not define are extra metadata, which this registry saves."""
    package = replace_document(valid_package(), 1, extra_slots=[
        Slot("urn:acuo:studyInstanceUid", ["1.2.3.4"]),
        Slot("urn:ihe:iti:xds:2013:referenceIdList", ["x^^^&1.2&ISO^urn:ihe:iti:xds:2013:accession"]),
        Slot("documentAvailability", ["urn:ihe:iti:2010:DocumentAvailability:Online"]),
        Slot("urn:acme:empty", []),
        Slot("urn:acme:long", ["v" * 256]),
    ])
    package.associations[3] = dataclasses.replace(package.associations[3], extra_slots=[
        Slot("urn:acme:order", ["1"]), Slot("PreviousVersion", ["1"])])
    assert validate_submission(package) == []


@pytest.mark.parametrize("obj", ["SubmissionSet", "Folder"])
def test_urn_extra_slots_are_legal_for_the_validator(obj: str) -> None:
    package = valid_package()
    slots = [Slot("urn:nhs:region", ["north"])]
    if obj == "SubmissionSet":
        package.submission_set = dataclasses.replace(package.submission_set, extra_slots=slots)
    else:
        package.folders = [dataclasses.replace(package.folders[0], extra_slots=slots)]
    assert validate_submission(package) == []


@pytest.mark.parametrize("where", ["document", "submission_set", "folder", "association"])
def test_undefined_urn_ihe_slot_names_are_metadata_errors(where: str) -> None:
    """urn:ihe: is IHE's namespace: a name there XDS does not define is refused, not kept as extra metadata
    (ITI TF-3 4.1.14; the NIST registry refuses it too)."""
    package = valid_package()
    # referenceIdList is defined for DocumentEntries only.
    slots = [Slot("urn:ihe:iti:xds:2099:madeUp" if where == "document" else "urn:ihe:iti:xds:2013:referenceIdList",
                  ["x"])]
    if where == "document":
        package = replace_document(package, 0, extra_slots=slots)
    elif where == "submission_set":
        package.submission_set = dataclasses.replace(package.submission_set, extra_slots=slots)
    elif where == "folder":
        package.folders = [dataclasses.replace(package.folders[0], extra_slots=slots)]
    else:
        package.associations[0] = dataclasses.replace(package.associations[0], extra_slots=slots)
    single(validate_submission(package), MD, f"slot '{slots[0].name}' is not defined", "reserved to IHE")


def test_extra_metadata_must_fit_an_ebrim_slot() -> None:
    package = replace_document(valid_package(), 0, extra_slots=[Slot("urn:acme:big", ["ok", "v" * 257])])
    single(validate_submission(package), MD, "Document01", "slot 'urn:acme:big' value #2 is 257 characters",
           location="Document01")
    package = replace_document(valid_package(), 0, extra_slots=[Slot("urn:" + "n" * 253, ["x"])])
    single(validate_submission(package), MD, "Document01", "longer than 256 characters")
    package = replace_document(valid_package(), 0, extra_slots=[Slot("urn:acme:x", ["1"]), Slot("urn:acme:x", ["2"])])
    single(validate_submission(package), MD, "Document01", "more than one Slot named 'urn:acme:x'")


# --- association documentation --------------------------------------------------------------------------------

REASON = code("CORR", "1.3.6.1.4.1.21367.2026.9", "Correction")


def test_association_documentation_on_relationships_is_valid() -> None:
    package = valid_package()
    package.associations[5] = dataclasses.replace(package.associations[5], documentation=[REASON])
    assert validate_submission(package) == []


def test_association_documentation_on_has_member_is_a_metadata_error() -> None:
    package = valid_package()
    package.associations[3] = dataclasses.replace(package.associations[3], documentation=[REASON])
    single(validate_submission(package), MD, "Association Association04 (HasMember Folder01 -> Document02)",
           "cannot carry Association Documentation", location="Association04")


def test_association_documentation_codes_are_checked() -> None:
    package = valid_package()
    package.associations[5] = dataclasses.replace(package.associations[5], documentation=[
        code("CORR", "1.2.3", None)])
    single(validate_submission(package), MD, "Association06", "associationDocumentation 'CORR'", "no display name")
    package.associations[5] = dataclasses.replace(package.associations[5], documentation=[REASON])
    listed = CodeList.from_mapping({"associationDocumentation": {"codes": [{"code": "ADD", "scheme": "1.2.3"}]}})
    single(validate_submission(package, code_list=listed), MD, "Association06",
           "associationDocumentation 'CORR' in scheme '1.3.6.1.4.1.21367.2026.9' is not in")


@pytest.mark.parametrize(
    ("where", "name", "fragment"),
    [
        ("document", "studyInstanceUid", "DocumentEntry Document01 (uniqueId"),
        ("document", "submissionTime", "DocumentEntry Document01"),  # defined, but for another object type
        ("submission_set", "creationTime", "SubmissionSet SubmissionSet01"),
        ("folder", "accessionNumber", "Folder Folder01"),
        ("association", "Comment", "Association Association01"),
    ],
)
def test_undefined_slot_names_without_urn_are_metadata_errors(where: str, name: str, fragment: str) -> None:
    package = valid_package()
    slots = [Slot(name, ["x"])]
    if where == "document":
        package = replace_document(package, 0, extra_slots=slots)
    elif where == "submission_set":
        package.submission_set = dataclasses.replace(package.submission_set, extra_slots=slots)
    elif where == "folder":
        package.folders = [dataclasses.replace(package.folders[0], extra_slots=slots)]
    else:
        package.associations[0] = dataclasses.replace(package.associations[0], extra_slots=slots)
    single(validate_submission(package), MD, fragment, f"slot '{name}' is not defined for a",
           "must begin with 'urn:'")


# --- code list ----------------------------------------------------------------------------------------------

NOT_LISTED = code("XX-1", "1.2.3.4.5", "Not in the list")


@pytest.mark.parametrize(
    ("field", "attribute"),
    [
        ("class_code", "classCode"),
        ("type_code", "typeCode"),
        ("format_code", "formatCode"),
        ("healthcare_facility_type_code", "healthcareFacilityTypeCode"),
        ("practice_setting_code", "practiceSettingCode"),
        ("confidentiality_codes", "confidentialityCode"),
        ("event_codes", "eventCodeList"),
    ],
)
def test_document_codes_must_be_in_the_code_list(field: str, attribute: str) -> None:
    value = [NOT_LISTED] if field.endswith("codes") else NOT_LISTED
    package = replace_document(valid_package(), 0, **{field: value})
    codes = load_code_list(EXAMPLE_CODES)
    single(validate_submission(package, code_list=codes), MD, "DocumentEntry Document01 (uniqueId",
           f"{attribute} 'XX-1' in scheme '1.2.3.4.5' is not in the affinity domain code list", location="Document01")
    assert validate_submission(package) == []  # without a code list any code goes


def test_content_type_and_folder_codes_checked_when_listed() -> None:
    codes = CodeList.from_mapping({
        "contentTypeCode": {"codes": [{"code": "18748-4", "scheme": "2.16.840.1.113883.6.1"}]},
        "folderCodeList": {"codes": [{"code": "Other", "scheme": "1.3.6.1.4.1.21367.100.1"}]},
    })
    errors = validate_submission(valid_package(), code_list=codes)
    single(errors, MD, "Folder Folder01", "codeList 'ImagingEpisode' in scheme '1.3.6.1.4.1.21367.100.1' is not in")
    package = valid_package()
    package.submission_set = dataclasses.replace(package.submission_set, content_type_code=NOT_LISTED)
    errors = validate_submission(package, code_list=load_code_list(EXAMPLE_CODES))
    single(errors, MD, "SubmissionSet SubmissionSet01", "contentTypeCode 'XX-1'")


# --- many findings at once, never an exception ------------------------------------------------------


def test_all_findings_are_returned_together() -> None:
    package = replace_document(valid_package(), 0, creation_time="bad", mime_type="bad", patient_id=OTHER_PATIENT)
    package.associations[4] = dataclasses.replace(package.associations[4], type=v.HAS_MEMBER, target_uuid="Nowhere")
    errors = validate_submission(package)
    assert {e.code for e in errors} == {MD, PID_MISMATCH}
    assert len(errors) == 4
    assert all(e.is_error for e in errors)


def test_bare_objects_give_findings_not_exceptions() -> None:
    package = SubmissionPackage(
        SubmissionSet(entry_uuid="SubmissionSet01"),
        [DocumentEntry(entry_uuid="Document01", title=LocalizedString(None), extra_slots=[Slot(None, [])])],
        [Folder(entry_uuid="Folder01")],
        [Association(entry_uuid="Association01", type=None, source_uuid=None, target_uuid=None)],
    )
    errors = validate_submission(package)
    attributes = ("classCode", "creationTime", "mimeType", "sourcePatientId", "submissionTime", "sourceId", "codeList")
    for attribute in attributes:
        matching(errors, MD, f"required attribute {attribute} is missing")
    matching(errors, MD, "Association Association01", "is not an XDS association type")
    matching(errors, MD, "Document01", "Slot without a name")
    assert all(e.code == MD for e in errors)
