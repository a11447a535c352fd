"""registry.patients against the real registry database: cross-references, updates, merges."""

from __future__ import annotations

import uuid
from xml.sax.saxutils import escape

import pytest

from ihe.metadata import vocabulary as v
from ihe.metadata.ebrim import object_fragment, read_registry_objects
from ihe.metadata.model import AvailabilityStatus, DocumentEntry, Identifiable
from ihe.namespaces import RIM
from ihe.xml import parse_xml
from registry.patients import (
    Demographics,
    IdentifierConflict,
    PatientIdentityError,
    PatientIdState,
    UnknownPatient,
    cross_references,
    find_patients,
    known_authority,
    merge_patients,
    record_patient,
    rewrite_patient_id,
    xds_patient_id_state,
)

NHS = "2.16.840.1.113883.2.1.4.1"
HOSP_A = "1.2.826.0.1.999.1"
HOSP_B = "1.2.826.0.1.999.2"


def nhs(n: str) -> Identifiable:
    return Identifiable(n, NHS, "NHS")


def xds(n: str) -> Identifiable:
    """The form XDS metadata carries: no namespace."""
    return Identifiable(n, NHS)


def hosp_a(n: str) -> Identifiable:
    return Identifiable(n, HOSP_A, "HOSPA")


def hosp_b(n: str) -> Identifiable:
    return Identifiable(n, HOSP_B)


def extrinsic_object(entry_id: str, patient_cx: str, source_cx: str) -> str:
    """A minimal DocumentEntry ebRIM fragment as the store keeps it."""
    return (
        f'<rim:ExtrinsicObject xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0" id="{entry_id}"'
        f' objectType="{v.DOCUMENT_ENTRY_STABLE}">'
        f'<rim:Slot name="sourcePatientId"><rim:ValueList><rim:Value>{escape(source_cx)}</rim:Value>'
        "</rim:ValueList></rim:Slot>"
        f'<rim:ExternalIdentifier id="urn:uuid:{uuid.uuid4()}" registryObject="{entry_id}"'
        f' identificationScheme="{v.DE_PATIENT_ID}" value="{escape(patient_cx)}"/>'
        f'<rim:ExternalIdentifier id="urn:uuid:{uuid.uuid4()}" registryObject="{entry_id}"'
        f' identificationScheme="{v.DE_UNIQUE_ID}" value="1.2.3.{uuid.uuid4().int % 10**8}"/>'
        "</rim:ExtrinsicObject>"
    )


async def insert_document(conn, patient: Identifiable, source: Identifiable) -> uuid.UUID:
    entry = uuid.uuid4()
    await conn.execute(
        "INSERT INTO document_entry (id, lid, status, object_type, patient_id, unique_id, ebrim)"
        " VALUES ($1, $1, $2, $3, $4, $5, $6)",
        entry, v.STATUS_APPROVED, v.DOCUMENT_ENTRY_STABLE, patient.to_cx(), f"1.2.3.{entry.int % 10**8}",
        extrinsic_object(f"urn:uuid:{entry}", patient.to_cx(), source.to_cx()),
    )
    return entry


async def insert_submission_set(conn, patient: Identifiable) -> uuid.UUID:
    ss = uuid.uuid4()
    fragment = (
        f'<rim:RegistryPackage xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0" id="urn:uuid:{ss}">'
        f'<rim:ExternalIdentifier id="urn:uuid:{uuid.uuid4()}" registryObject="urn:uuid:{ss}"'
        f' identificationScheme="{v.SS_PATIENT_ID}" value="{escape(patient.to_cx())}"/></rim:RegistryPackage>'
    )
    await conn.execute(
        "INSERT INTO submission_set (id, lid, status, patient_id, unique_id, ebrim) VALUES ($1, $1, $2, $3, $4, $5)",
        ss, v.STATUS_APPROVED, patient.to_cx(), f"1.2.4.{ss.int % 10**8}", fragment,
    )
    return ss


async def test_new_patient_cross_references_all_identifiers(registry_pool):
    async with registry_pool.acquire() as conn:
        ids = [nhs("9434765919"), hosp_a("A100"), hosp_b("B200")]
        patient = await record_patient(conn, ids, Demographics("Smith", "Jane", "19800102", "F"))
        assert patient > 0
        assert set(await cross_references(conn, hosp_a("A100"))) == {nhs("9434765919"), hosp_b("B200")}
        assert await cross_references(conn, hosp_a("A100"), [NHS]) == [nhs("9434765919")]
        assert await cross_references(conn, hosp_b("B200"), ["HOSPA"]) == [hosp_a("A100")]
        assert await cross_references(conn, hosp_a("A999")) == []
        assert await xds_patient_id_state(conn, Identifiable("9434765919", NHS), NHS) is PatientIdState.KNOWN
        assert await xds_patient_id_state(conn, Identifiable("9434765919", NHS), None) is PatientIdState.KNOWN
        assert await xds_patient_id_state(conn, Identifiable("0000000000", NHS), NHS) is PatientIdState.UNKNOWN
        # A known hospital number is still not an affinity-domain id.
        assert await xds_patient_id_state(conn, Identifiable("A100", HOSP_A), NHS) is PatientIdState.UNKNOWN
        assert await xds_patient_id_state(conn, Identifiable("A100", HOSP_A), None) is PatientIdState.KNOWN
        assert await known_authority(conn, NHS) and await known_authority(conn, "HOSPA")
        assert not await known_authority(conn, "1.9.9.9")


async def test_update_keeps_unsent_fields_and_adds_identifiers(registry_pool):
    async with registry_pool.acquire() as conn:
        first = await record_patient(conn, [nhs("111"), hosp_a("A1")], Demographics("Smith", "Jane", "1980", "F"))
        again = await record_patient(conn, [hosp_a("A1"), hosp_b("B1")], Demographics("Jones", None, "19800102"))
        assert again == first
        row = await conn.fetchrow("SELECT * FROM patient WHERE id = $1", first)
        assert (row["family_name"], row["given_name"], row["birth_date"], row["sex"]) == ("Jones", "Jane", "19800102",
                                                                                         "F")
        assert set(await cross_references(conn, nhs("111"))) == {hosp_a("A1"), hosp_b("B1")}
        assert await conn.fetchval("SELECT count(*) FROM patient") == 1


async def test_identifiers_of_two_patients_are_a_conflict_and_change_nothing(registry_pool):
    async with registry_pool.acquire() as conn:
        await record_patient(conn, [nhs("1"), hosp_a("A1")], Demographics("One"))
        await record_patient(conn, [nhs("2"), hosp_a("A2")], Demographics("Two"))
        with pytest.raises(IdentifierConflict, match="2 different patients"):
            await record_patient(conn, [hosp_a("A1"), hosp_a("A2"), hosp_b("NEW")], Demographics("Three"))
        assert await conn.fetchval("SELECT count(*) FROM patient_identifier WHERE id_value = 'NEW'") == 0
        assert await conn.fetchval("SELECT family_name FROM patient ORDER BY id LIMIT 1") == "One"
        with pytest.raises(ValueError, match="no assigning authority"):
            await record_patient(conn, [Identifiable("X")], Demographics())


async def test_merge_retires_merged_id_and_moves_documents(registry_pool):
    async with registry_pool.acquire() as conn:
        survivor = await record_patient(conn, [nhs("2222"), hosp_a("S1")], Demographics("Keep", "Me"))
        await record_patient(conn, [nhs("3333"), hosp_b("M1")], Demographics("Drop", "Me"))
        # Submissions carry the XDS form id^^^&oid&ISO; one here also carries a namespace.
        doc = await insert_document(conn, xds("3333"), hosp_b("M1"))
        other_doc = await insert_document(conn, xds("2222"), hosp_a("S1"))
        ss = await insert_submission_set(conn, nhs("3333"))

        result = await merge_patients(conn, nhs("2222"), nhs("3333"))
        assert (result.surviving_patient, result.document_entries, result.submission_sets, result.folders) == (
            survivor, 1, 1, 0)

        assert await xds_patient_id_state(conn, xds("3333"), NHS) is PatientIdState.MERGED
        assert await xds_patient_id_state(conn, xds("2222"), NHS) is PatientIdState.KNOWN
        # The merged patient's hospital number now names the surviving patient.
        assert await cross_references(conn, hosp_b("M1"), [NHS]) == [nhs("2222")]
        assert await cross_references(conn, nhs("3333")) == []

        row = await conn.fetchrow("SELECT patient_id, ebrim FROM document_entry WHERE id = $1", doc)
        assert row["patient_id"] == xds("2222").to_cx()
        assert f'value="{escape(xds("2222").to_cx())}"' in row["ebrim"]
        assert "3333^^^" not in row["ebrim"]
        assert escape(hosp_b("M1").to_cx()) in row["ebrim"]  # sourcePatientId untouched
        untouched = await conn.fetchrow("SELECT patient_id, ebrim FROM document_entry WHERE id = $1", other_doc)
        assert untouched["patient_id"] == f"2222^^^&{NHS}&ISO"
        ss_row = await conn.fetchrow("SELECT patient_id, ebrim FROM submission_set WHERE id = $1", ss)
        assert ss_row["patient_id"] == xds("2222").to_cx() and "3333^^^" not in ss_row["ebrim"]

        again = await merge_patients(conn, nhs("2222"), nhs("3333"))
        assert again.already_merged and again.document_entries == 0

        with pytest.raises(IdentifierConflict, match="merged"):
            await record_patient(conn, [nhs("3333")], Demographics("Back"))


async def test_merge_errors_change_nothing(registry_pool):
    async with registry_pool.acquire() as conn:
        await record_patient(conn, [nhs("10")], Demographics("A"))
        await record_patient(conn, [nhs("11")], Demographics("B"))
        await record_patient(conn, [nhs("12")], Demographics("C"))
        with pytest.raises(UnknownPatient, match="MRG-1"):
            await merge_patients(conn, nhs("10"), nhs("99"))
        with pytest.raises(UnknownPatient, match="surviving"):
            await merge_patients(conn, nhs("98"), nhs("10"))
        with pytest.raises(PatientIdentityError, match="is the surviving"):
            await merge_patients(conn, nhs("10"), nhs("10"))
        await merge_patients(conn, nhs("10"), nhs("11"))
        with pytest.raises(PatientIdentityError, match="itself merged"):
            await merge_patients(conn, nhs("11"), nhs("12"))
        with pytest.raises(PatientIdentityError, match="already merged into another"):
            await merge_patients(conn, nhs("12"), nhs("11"))
        assert await xds_patient_id_state(conn, nhs("12"), NHS) is PatientIdState.KNOWN


async def test_merge_chains_point_at_the_last_survivor(registry_pool):
    async with registry_pool.acquire() as conn:
        await record_patient(conn, [nhs("20")], Demographics("A"))
        await record_patient(conn, [nhs("21")], Demographics("B"))
        last = await record_patient(conn, [nhs("22")], Demographics("C"))
        await merge_patients(conn, nhs("21"), nhs("20"))
        await merge_patients(conn, nhs("22"), nhs("21"))
        targets = await conn.fetch(
            "SELECT DISTINCT p.merged_into FROM patient_identifier i JOIN patient p ON p.id = i.patient"
            " WHERE i.id_value IN ('20', '21')")
        assert [r["merged_into"] for r in targets] == [last]


async def test_merge_of_two_ids_of_the_same_patient(registry_pool):
    async with registry_pool.acquire() as conn:
        await record_patient(conn, [nhs("30"), nhs("31"), hosp_a("A30")], Demographics("Dup"))
        await merge_patients(conn, nhs("30"), nhs("31"))
        assert await xds_patient_id_state(conn, nhs("31"), NHS) is PatientIdState.MERGED
        assert await xds_patient_id_state(conn, nhs("30"), NHS) is PatientIdState.KNOWN
        assert await cross_references(conn, hosp_a("A30")) == [nhs("30")]


async def test_find_patients(registry_pool):
    async with registry_pool.acquire() as conn:
        await record_patient(conn, [nhs("40"), hosp_a("A40")], Demographics("O'Brien", "Ann", "19700101", "F"))
        await record_patient(conn, [nhs("41")], Demographics("Obi", "Bo", "19700101", "M"))
        await record_patient(conn, [nhs("42")], Demographics("O%Neil", "Cy", "19900101", "M"))
        found = await find_patients(conn, family="o*")
        assert [p.demographics.family for p in found] == ["O%Neil", "O'Brien", "Obi"]
        assert [p.demographics.given for p in await find_patients(conn, family="o%*")] == ["Cy"]
        one = await find_patients(conn, birth_date="19700101", sex="F")
        assert len(one) == 1 and set(one[0].identifiers) == {nhs("40"), hosp_a("A40")}
        await merge_patients(conn, nhs("40"), nhs("41"))
        assert [p.demographics.given for p in await find_patients(conn, birth_date="19700101")] == ["Ann"]


def test_rewrite_patient_id_changes_only_the_patient_id():
    fragment = extrinsic_object("urn:uuid:1", nhs("1").to_cx(), nhs("1").to_cx())
    out = rewrite_patient_id(fragment, nhs("2").to_cx())
    assert out.count(escape(nhs("2").to_cx())) == 1
    assert f"<rim:Value>{escape(nhs('1').to_cx())}</rim:Value>" in out
    with pytest.raises(ValueError, match="no patientId"):
        rewrite_patient_id('<rim:RegistryPackage xmlns:rim="urn:x" id="a"/>', "x")


def test_rewrite_matches_the_ebrim_writer():
    """A merged fragment is what ihe.metadata.ebrim would write for the object under the surviving id."""
    entry = DocumentEntry(entry_uuid="urn:uuid:0b7f5a2e-4f0e-4a56-9c5e-2f7e7c5b6a11", unique_id="1.2.3",
                          patient_id=xds("333"), source_patient_id=xds("333"), mime_type="text/plain",
                          status=AvailabilityStatus.APPROVED)
    merged = rewrite_patient_id(object_fragment(entry).decode(), xds("222").to_cx())
    entry.patient_id = xds("222")
    assert merged == object_fragment(entry).decode()
    wrapped = f"<rim:RegistryObjectList xmlns:rim=\"{RIM}\">{merged}</rim:RegistryObjectList>"
    (read,) = read_registry_objects(parse_xml(wrapped.encode()))
    assert (read.patient_id, read.source_patient_id) == (xds("222"), xds("333"))
