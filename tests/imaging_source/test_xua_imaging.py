"""XUA at an imaging source started with ``--xua required``: RAD-69 (SOAP), WADO-RS and WADO-URI all ask for
a valid assertion, with no code of their own; the health and status pages stay open."""

from __future__ import annotations

import io
import urllib.error
import urllib.request

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from consumer.client.soap import SoapClient, SoapFaultError
from ihe.xua.assertion import authorization_header, build_assertion, security_header
from tests.imaging_source.conftest import send_with_pynetdicom, start_imaging_source
from tests.imaging_source.rad69_client import rad69
from tests.xua_keys import AUDIENCE, CLINICIAN, PORTAL_ISSUER, make_signer, write_trust_file

EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def portal():
    return make_signer(PORTAL_ISSUER, "portal")


@pytest.fixture(scope="module")
def xua_source(new_imaging_database, tmp_path_factory, portal, samples):
    tmp = tmp_path_factory.mktemp("xua-imaging")
    service = start_imaging_source(new_imaging_database(), tmp / "instances", "--quiet-period", "3600",
                                   "--xua", "required", "--xua-trust", str(write_trust_file(tmp, [portal])))
    assert send_with_pynetdicom(service.dicom_port, [samples["CT"]]) == [0]
    yield service
    service.stop()


def _get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_wado_needs_an_assertion(xua_source, portal, samples):
    ds = pydicom.dcmread(samples["CT"])
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    valid = authorization_header(build_assertion(CLINICIAN, portal, audience=AUDIENCE))
    stranger = authorization_header(build_assertion(CLINICIAN, make_signer(PORTAL_ISSUER), audience=AUDIENCE))
    rs = f"{xua_source.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    uri = f"{xua_source.url}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}" \
          "&contentType=application/dicom"
    for url in (rs, uri):
        status, body = _get(url, {})
        assert status == 401 and b"requires an XUA assertion" in body, url
        status, body = _get(url, stranger)
        assert status == 401 and b"does not verify" in body, url
    status, body = _get(uri, valid)
    assert status == 200 and pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID == sop
    client = DICOMwebClient(f"{xua_source.url}/dicomweb", headers=valid)
    assert client.retrieve_instance(study, series, sop).SOPInstanceUID == sop
    assert _get(f"{xua_source.url}/health", {})[0] == 200


async def test_rad69_needs_an_assertion(xua_source, portal, samples):
    ds = pydicom.dcmread(samples["CT"])
    documents = [(ds.StudyInstanceUID, ds.SeriesInstanceUID, xua_source.repository_unique_id, ds.SOPInstanceUID)]
    url = f"{xua_source.url}/rad69"
    async with SoapClient() as client:
        with pytest.raises(SoapFaultError) as info:
            await rad69(client, url, documents, [EXPLICIT_LE])
        assert info.value.fault.subcode == "wsse:InvalidSecurity"
        security = security_header(build_assertion(CLINICIAN, portal, audience=AUDIENCE))
        original = client.call

        async def call_with_assertion(*args, **kwargs):
            return await original(*args, security=security, **kwargs)

        client.call = call_with_assertion
        status, errors, docs = await rad69(client, url, documents, [ds.file_meta.TransferSyntaxUID, EXPLICIT_LE])
    assert status.endswith(":Success") and errors == [] and list(docs) == [ds.SOPInstanceUID]
