"""Pure parts of the Imaging Document Consumer client and the browsing commands."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from consumer.browse_cli import _parse_identifier, format_identifier
from consumer.client.browse import study_reference
from consumer.client.imaging import (
    InstanceRequest,
    ManifestError,
    rad69_request,
    rad69_url,
    read_study_manifest,
    service_base,
    wado_rs_link,
    wado_uri_link,
)
from ihe.metadata.model import Identifiable
from ihe.namespaces import XDSB, XDSI, qn


@pytest.mark.parametrize("url", ["http://h:1/dicomweb", "http://h:1/dicomweb/", "http://h:1/dicomweb/studies/1.2"])
def test_links_from_the_retrieve_url(url):
    assert service_base(url) == "http://h:1"
    assert rad69_url(url) == "http://h:1/rad69"
    assert wado_rs_link(url, "1.2", "1.3", "1.4") == "http://h:1/dicomweb/studies/1.2/series/1.3/instances/1.4"
    link = urlsplit(wado_uri_link(url, "1.2", "1.3", "1.4"))
    assert link.path == "/wado"
    assert parse_qs(link.query) == {"requestType": ["WADO"], "studyUID": ["1.2"], "seriesUID": ["1.3"],
                                    "objectUID": ["1.4"], "contentType": ["application/dicom"]}


def test_rad69_request_groups_instances_by_study_and_series():
    root = rad69_request([InstanceRequest("1", "1.1", "a", "9"), InstanceRequest("1", "1.1", "b", "9"),
                          InstanceRequest("1", "1.2", "c", "9")], ["1.2.840.10008.1.2.1"])
    (study,) = root.findall(qn(XDSI, "StudyRequest"))
    series = study.findall(qn(XDSI, "SeriesRequest"))
    assert [s.get("seriesInstanceUID") for s in series] == ["1.1", "1.2"]
    assert [d.findtext(qn(XDSB, "DocumentUniqueId")) for d in series[0]] == ["a", "b"]
    assert series[1][0].findtext(qn(XDSB, "RepositoryUniqueId")) == "9"


def test_a_manifest_that_is_not_dicom_is_refused():
    with pytest.raises(ManifestError, match="not a DICOM file"):
        read_study_manifest(b"%PDF-1.4 not a manifest")


def test_identifiers_round_trip_as_cx():
    ident = _parse_identifier("A123^^^&1.2.3&ISO")
    assert ident == Identifiable("A123", "1.2.3", None)
    assert format_identifier(ident) == "A123^^^&1.2.3&ISO"
    assert _parse_identifier("A1^^^HOSP") == Identifiable("A1", None, "HOSP")
    with pytest.raises(ValueError):
        _parse_identifier("^^^&1.2&ISO")


def test_study_reference_is_what_the_imaging_source_writes():
    from imaging_source.publish import STUDY_UID_TYPE

    assert study_reference("1.2.3") == f"1.2.3^^^^{STUDY_UID_TYPE}"
