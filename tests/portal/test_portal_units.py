"""The portal's pure parts: NHS numbers, claims, settings, rows and filters, manifests, CDA narrative."""

from __future__ import annotations

import json
from datetime import date

import pydicom
import pytest

from consumer.portal import aggregate, cda, dicomweb_proxy, manifests, search
from consumer.portal.app import safe_return_path
from consumer.portal.oidc import SignInError, claim_value, identity_from_claims
from consumer.portal.settings import Hospital, PortalSettings, parse_hospitals, parse_registries
from ihe.metadata.model import Code, DocumentEntry, Identifiable, LocalizedString, ReferenceId
from ihe.nhs import NHS_NUMBER_OID, is_nhs_number
from tests.portal.conftest import valid_nhs_number


@pytest.mark.parametrize("number, valid", [
    ("9434765919", True), ("9434765918", False), ("943476591", False), ("94347659190", False), ("94347a5919", False),
    ("4010232137", True), ("0000000000", True),
])
def test_nhs_number_check_digit(number, valid):
    assert is_nhs_number(number) is valid


def test_generated_nhs_numbers_are_valid():
    assert all(is_nhs_number(valid_nhs_number()) for _ in range(50))


def test_patient_ids_are_normalised_and_checked():
    settings = PortalSettings()
    assert search.normalise_patient_id(" 943 476-5919 ", settings) == "9434765919"
    with pytest.raises(search.SearchError, match="not a valid NHS number"):
        search.normalise_patient_id("9434765918", settings)
    other = PortalSettings(affinity_domain_oid="1.2.3")
    assert search.normalise_patient_id("P-123", other) == "P123"
    with pytest.raises(search.SearchError):
        search.normalise_patient_id("<script>", other)
    assert search.patient_cx("9434765919", settings) == "9434765919^^^&2.16.840.1.113883.2.1.4.1&ISO"


def test_pdq_matches_become_candidates_with_the_affinity_domain_id():
    settings = PortalSettings()

    class Match:
        def __init__(self, ids, family, given, born):
            self.identifiers, self.family, self.given, self.birth_date = ids, family, given, born

    matches = [Match([Identifiable("H1", "1.2.3"), Identifiable("9434765919", NHS_NUMBER_OID)], "Smith", "Ann",
                     "19700101"),
               Match([Identifiable("H2", "1.2.3")], "Smith", "Bob", "19700101"),  # no NHS number: not offered
               {"identifiers": [Identifiable("4010232137", NHS_NUMBER_OID)], "family": "Smith"}]
    found = search.candidates_from_pdq(matches, settings)
    assert [(c.patient_id, c.name, c.birth_date) for c in found] == [
        ("9434765919", "Ann Smith", "19700101"), ("4010232137", "Smith", "")]


async def test_search_without_a_registry_address_says_so():
    with pytest.raises(search.SearchError, match="registry-mllp"):
        await search.by_hospital_number(PortalSettings(), Hospital("A", "1.1", "http://x", "1.2.3"), "123")
    with pytest.raises(search.SearchError, match="choose the hospital"):
        await search.by_hospital_number(PortalSettings(), None, "123")
    with pytest.raises(search.SearchError, match="YYYY-MM-DD"):
        await search.by_name_and_birth_date(PortalSettings(registry_mllp="127.0.0.1:1"), "Smith", "01/02/1970")


def test_claims_map_to_user_role_and_organisation():
    settings = PortalSettings(oidc_role_claim="groups:role-", oidc_organisation_claim="groups:org-")
    claims = {"sub": "u1", "name": "Dr A", "groups": ["staff", "role-radiologist", "org-Hospital B"]}
    identity = identity_from_claims(claims, settings)
    assert (identity.subject, identity.user_name, identity.role, identity.organisation) == (
        "u1", "Dr A", "radiologist", "Hospital B")
    plain = PortalSettings(oidc_role_claim="role", oidc_organisation_claim="organisation")
    identity = identity_from_claims({"sub": "u2", "email": "a@b", "role": ["clinician", "x"],
                                     "organisation": "Hospital A"}, plain)
    assert (identity.user_name, identity.role, identity.organisation) == ("a@b", "clinician", "Hospital A")
    assert claim_value({}, "role") is None
    with pytest.raises(SignInError):
        identity_from_claims({"name": "nobody"}, plain)


@pytest.mark.parametrize("value, expected", [
    ("/patients/1", "/patients/1"), ("/", "/"), (None, "/"), ("", "/"), ("//evil.example/x", "/"),
    ("https://evil.example/", "/"), ("/\\evil.example", "/"),
])
def test_only_local_paths_are_returned_to(value, expected):
    assert safe_return_path(value) == expected


def test_region_description_from_flags_and_toml_lists():
    assert parse_registries("Region|http://r/registry;Other|http://o/registry") == parse_registries(
        ["Region|http://r/registry", ["Other", "http://o/registry"]])
    assert parse_registries("http://r/registry")[0].url == "http://r/registry"
    [a, b] = parse_hospitals("A|1.1|http://a/repository|1.2.3; B|1.2|http://b/repository")
    assert (a.name, a.repository_unique_id, a.patient_id_oid, b.patient_id_oid) == ("A", "1.1", "1.2.3", None)
    with pytest.raises(ValueError, match="NAME"):
        parse_hospitals("A|1.1")
    settings = PortalSettings.from_dict({"registries": "R|http://r", "hospitals": None, "port": 9000,
                                         "public_url": "https://portal.example.org/", "registry_mllp": "reg:2575"})
    assert settings.secure_cookies and settings.redirect_url == "https://portal.example.org/auth/callback"
    assert settings.mllp_address == ("reg", 2575) and not PortalSettings().secure_cookies


def _entry(uid: str, **kwargs) -> DocumentEntry:
    return DocumentEntry(entry_uuid=f"urn:uuid:{uid}", unique_id=uid, repository_unique_id="1.1", **kwargs)


def test_rows_from_metadata_newest_first_with_reports_linked():
    study = "1.2.840.1"
    kos = _entry("k", mime_type="application/dicom", service_start_time="20200102", title=LocalizedString("CT"),
                 event_codes=[Code("CT", aggregate.DICOM_MODALITY_SCHEME), Code("T-1", "SRT")],
                 reference_ids=[ReferenceId(f"{study}^^^^urn:ihe:iti:xds:2016:studyInstanceUID")],
                 type_code=Code("18748-4", "2.16.840.1.113883.6.1", LocalizedString("Diagnostic imaging study")))
    report = _entry("r", mime_type="application/pdf", creation_time="20200103101500",
                    reference_ids=[ReferenceId(f"{study}^^^^urn:ihe:iti:xds:2016:studyInstanceUID")])
    other_kos = _entry("k2", mime_type="application/dicom", creation_time="2019")
    entries = {("1.1", e.unique_id): e for e in (kos, report, other_kos)}
    rows = [aggregate.entry_row(e, "A", "R") for e in entries.values()]
    aggregate.mark_reports(rows, entries)
    rows = aggregate.newest_first(rows)
    assert [r.document_unique_id for r in rows] == ["r", "k", "k2"]
    assert [r.date for r in rows] == ["2020-01-03 10:15", "2020-01-02", "2019"]
    assert rows[1].kind == "imaging" and rows[1].modality == "CT" and rows[1].study_uid == study
    assert rows[1].type == "Diagnostic imaging study" and rows[1].description == "CT"
    assert [r.report_present for r in rows] == [True, True, False]


def test_filters():
    rows = [aggregate.Row("2020-01-02", "20200102000000", "A", "imaging", "CT, MR", "T1", "", "", "1", "a", "R"),
            aggregate.Row("2021-05-06", "20210506000000", "B", "document", "", "T2", "", "", "2", "b", "R"),
            aggregate.Row("", "00000000000000", "B", "document", "", "T2", "", "", "2", "c", "R")]
    keep = lambda f: [r.document_unique_id for r in rows if f.keep(r)]  # noqa: E731
    assert keep(aggregate.Filters(hospital="B")) == ["b", "c"]
    assert keep(aggregate.Filters(modality="MR")) == ["a"]
    assert keep(aggregate.Filters(type="T1")) == ["a"]
    assert keep(aggregate.Filters(date_from=date(2021, 1, 1))) == ["b"]
    assert keep(aggregate.Filters(date_to=date(2020, 12, 31))) == ["a"]
    assert aggregate.Filters.from_query({"from": "2021-01-01", "hospital": " B "}) == aggregate.Filters(
        hospital="B", date_from=date(2021, 1, 1))
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        aggregate.Filters.from_query({"to": "31/12/2020"})
    with pytest.raises(ValueError, match="from 2021-01-02 is after to 2021-01-01"):
        aggregate.Filters.from_query({"from": "2021-01-02", "to": "2021-01-01"})
    one_day = aggregate.Filters.from_query({"from": "2021-05-06", "to": "2021-05-06"})
    assert keep(one_day) == ["b"]


def test_study_state_of_a_study_its_source_no_longer_holds():
    from consumer.portal import study_state as st

    status = "urn:oasis:names:tc:ebxml-regrep:StatusType:"
    withdrawn = st.gone_state("1.2.3", "Hospital A", "9.8.7", 3, status + "Deprecated")
    assert (withdrawn.state, withdrawn.http_status) == ("withdrawn", 410)
    assert withdrawn.title == "Study withdrawn by its source"
    assert "Hospital A withdrew this study" in withdrawn.reason and "9.8.7" in withdrawn.reason
    deleted = st.gone_state("1.2.3", "Hospital A", "9.8.7", 1, status + "Approved")
    assert deleted.state == "deleted" and "lists 1 image and is still approved" in deleted.reason
    unknown = st.gone_state("1.2.3", "Hospital A", "9.8.7", 2, None, "Region: TransportError: refused")
    assert unknown.state == "deleted" and "could not be asked whether it was withdrawn" in unknown.reason
    assert st.StudyState("4.5", "available").ok and not withdrawn.ok


def test_the_open_patients_studies_are_its_imaging_rows_study_uids_once_each():
    from consumer.portal.patient_context import study_uids

    def row(kind: str, study: str | None) -> aggregate.Row:
        return aggregate.Row("", "0" * 14, "A", kind, "", "", "", "", "1", "d", "R", study_uid=study)

    rows = [row("imaging", "1.2"), row("document", "9.9"), row("imaging", None), row("imaging", "1.3"),
            row("imaging", "1.2")]
    assert study_uids(rows) == ["1.2", "1.3"]


def _kos(series: int = 2, per_series: int = 3) -> bytes:
    from pydicom.uid import generate_uid

    from imaging_source.manifest import ReferencedInstance, RetrieveInfo, build_manifest
    from tests.imaging_source.conftest import sample_path

    header = pydicom.dcmread(sample_path("CT_small.dcm"), stop_before_pixels=True)
    refs = [ReferencedInstance(s_uid, header.SOPClassUID, generate_uid())
            for s_uid in (generate_uid() for _ in range(series)) for _ in range(per_series)]
    return build_manifest(header, refs, RetrieveInfo("AE1", "1.2.3.4", "http://img.example:8040/dicomweb")).encoded


def test_manifest_counts_and_retrieve_address():
    info = manifests.read_manifest(_kos())
    assert (info.series_count, info.image_count) == (2, 6)
    assert (info.retrieve_url, info.retrieve_location_uid, info.retrieve_ae_title) == (
        "http://img.example:8040/dicomweb", "1.2.3.4", "AE1")
    with pytest.raises(manifests.ManifestError, match="not a DICOM file"):
        manifests.read_manifest(b"not dicom at all")


@pytest.mark.parametrize("url, root", [
    ("http://img:8040/dicomweb", "http://img:8040/dicomweb"), ("http://img:8040/dicomweb/", "http://img:8040/dicomweb"),
    ("https://img/dicomweb/studies/1.2/series/3.4", "https://img/dicomweb"), ("ftp://img/x", None), (None, None),
])
def test_dicomweb_root_of_a_retrieve_url(url, root):
    assert manifests.dicomweb_root(url) == root


def test_cda_narrative_is_rendered_and_escaped():
    doc = cda.read_cda(b"""<ClinicalDocument xmlns="urn:hl7-org:v3"><title>Letter &amp; more</title>
      <component><structuredBody><component><section><title>A</title><text>x<br/>y
        <table><tr><td colspan="2" onclick="evil()">c</td><td colspan="2;x">d</td></tr></table>
        <linkHtml href="javascript:alert(1)">link</linkHtml><unknown>kept <b>text</b></unknown>
        <renderMultiMedia referencedObject="m"/></text>
        <component><section><title>Nested</title><text>&lt;img src=x onerror=alert(1)&gt;</text></section></component>
      </section></component></structuredBody></component></ClinicalDocument>""")
    assert doc.title == "Letter & more"
    [section] = doc.sections
    html = str(section.html)
    assert "x<br>y" in html and '<td colspan="2">c</td>' in html and "<td>d</td>" in html
    assert "onclick" not in html and "javascript" not in html and "<span>link</span>" in html
    assert "kept text" in html and "<b>" not in html
    assert str(section.sections[0].html) == "&lt;img src=x onerror=alert(1)&gt;"
    with pytest.raises(cda.NotCDA):
        cda.read_cda(b"<html/>")
    with pytest.raises(cda.NotCDA):
        cda.read_cda(b'<!DOCTYPE x [<!ENTITY e "boom">]><ClinicalDocument xmlns="urn:hl7-org:v3"/>')


def test_configuration_file_lists_and_environment(tmp_path):
    from consumer.portal.cli import main
    from consumer.portal.settings import OPTIONS
    from ihe.config import build_parser, resolve

    config = tmp_path / "portal.toml"
    config.write_text('[portal]\nregistries = ["Region|http://r/registry"]\n'
                      'hospitals = [["A", "1.1", "http://a/repository", "1.2.3"]]\nsession-idle = 60\n')
    args = build_parser("portal", "", OPTIONS).parse_args(["--config", str(config)])
    settings = PortalSettings.from_dict(resolve("portal", OPTIONS, args, {"XDS_PORTAL_SESSION_IDLE": "90"}))
    assert settings.registries[0].url == "http://r/registry" and settings.hospitals[0].patient_id_oid == "1.2.3"
    assert settings.session_idle == 90  # the environment wins over the file
    with pytest.raises(SystemExit) as refused:
        main(["--database-url", "postgresql://unused/x"])
    assert refused.value.code == 2


async def test_imaging_rows_are_checked_at_their_source_in_batches() -> None:
    """The list asks each imaging source whether it still holds the rows' studies, 40 UIDs per search; a study
    it does not return is "images unavailable"; a source that does not answer marks its rows unreachable."""
    import aiohttp

    from consumer.portal.context import Portal
    from tests.portal.test_dicomweb_proxy import FakeSource

    class Forgetful(FakeSource):  # holds every study but the last
        async def studies(self, request):
            answer = await super().studies(request)
            items = [i for i in json.loads(answer.body) if i["0020000D"]["Value"][0] != "1.2.3.99"]
            return aiohttp.web.json_response(items, content_type="application/dicom+json")

    source = Forgetful("A")
    await source.server.start_server()
    http = aiohttp.ClientSession()
    try:
        portal = Portal(settings=PortalSettings(query_deadline=5), pool=None, http=http, soap=None)
        rows = [aggregate.Row("", "0" * 14, "Hospital A", "imaging", "CT", "", "", "", "1", f"d{n}", "R",
                              study_uid=f"1.2.3.{n}", images_at=source.root) for n in range(100)]
        state = await aggregate._visit_imaging_source(portal, source.root, rows)
        assert state.ok and state.kind == "imaging source" and state.name == "Hospital A"
        assert sorted(len(dicomweb_proxy.study_uids(r.query["StudyInstanceUID"])) for r in source.seen) == [20, 40, 40]
        assert {r.status for r in rows[:99]} == {"available"}
        assert rows[99].status == "images unavailable" and "no longer holds this study" in rows[99].status_reason
        root = source.root
        await source.server.close()
        down = await aggregate._visit_imaging_source(portal, root, rows[:3])
        assert not down.ok and {r.status for r in rows[:3]} == {"source unreachable"}
        assert rows[0].status_reason.startswith("Hospital A's imaging source: ")
    finally:
        await http.close()
        await source.server.close()
