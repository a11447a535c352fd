"""RAD-69 Retrieve Imaging Document Set against the running imaging source: MTOM response with the
instances byte-identical, the three per-document errors, PartialSuccess, and SOAP faults."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from consumer.client.soap import SoapClient, SoapFaultError
from ihe.errors import STATUS_FAILURE, STATUS_PARTIAL_SUCCESS, STATUS_SUCCESS
from tests.imaging_source.rad69_client import rad69

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"


@pytest.fixture
async def client():
    async with SoapClient(timeout=60) as c:
        yield c


def _doc(ds, repo):
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, repo, ds.SOPInstanceUID


async def test_retrieve_every_sample_as_stored(imaging_source, stored_samples, client):
    originals = [pydicom.dcmread(p) for p in stored_samples.values()]
    syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in originals})
    status, errors, docs = await rad69(client, f"{imaging_source.url}/rad69",
                                       [_doc(ds, imaging_source.repository_unique_id) for ds in originals], syntaxes)
    assert (status, errors) == (STATUS_SUCCESS, [])
    for ds in originals:
        got = pydicom.dcmread(io.BytesIO(docs[ds.SOPInstanceUID]))
        assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert got.PixelData == ds.PixelData


async def test_transcodes_when_the_stored_syntax_is_not_accepted(imaging_source, stored_samples, client):
    ds = pydicom.dcmread(stored_samples["CR"])  # JPEG 2000 lossless
    documents = [_doc(ds, imaging_source.repository_unique_id)]
    status, _, docs = await rad69(client, f"{imaging_source.url}/rad69", documents, [JPEG_BASELINE, EXPLICIT_LE])
    got = pydicom.dcmread(io.BytesIO(docs[ds.SOPInstanceUID]))
    assert status == STATUS_SUCCESS and got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(got.pixel_array, ds.pixel_array)


async def test_errors_and_partial_success(imaging_source, stored_samples, client):
    repo = imaging_source.repository_unique_id
    ct, cr = pydicom.dcmread(stored_samples["CT"]), pydicom.dcmread(stored_samples["CR"])
    rle = pydicom.dcmread(stored_samples["US_RLE"])
    documents = [
        _doc(rle, repo),                                                  # fine: RLE asked, RLE stored
        _doc(ct, "1.2.3.4.5.6"),                                          # another repository
        (ct.StudyInstanceUID, ct.SeriesInstanceUID, repo, "1.2.3.999"),   # unknown instance
        (ct.StudyInstanceUID, "1.2.3.4", repo, ct.SOPInstanceUID),        # wrong series
        _doc(cr, repo),                                                   # J2K cannot become RLE or JPEG
    ]
    status, errors, docs = await rad69(client, f"{imaging_source.url}/rad69", documents,
                                       [RLE, JPEG_BASELINE])
    assert status == STATUS_PARTIAL_SUCCESS
    assert list(docs) == [rle.SOPInstanceUID]
    assert pydicom.dcmread(io.BytesIO(docs[rle.SOPInstanceUID])).PixelData == rle.PixelData
    assert [e.code for e in errors] == ["XDSUnknownRepositoryId", "XDSDocumentUniqueIdError",
                                        "XDSDocumentUniqueIdError", "XDSRepositoryError"]
    assert errors[3].location == cr.SOPInstanceUID and JPEG_BASELINE in errors[3].context
    status, errors, docs = await rad69(client, f"{imaging_source.url}/rad69", documents[1:2], [EXPLICIT_LE])
    assert status == STATUS_FAILURE and docs == {} and len(errors) == 1


async def test_malformed_requests_get_soap_faults(imaging_source, stored_samples, client):
    from lxml import etree

    from ihe.namespaces import ACTION_ITI43, ACTION_RAD69, XDSI, qn

    with pytest.raises(SoapFaultError) as fault:
        await rad69(client, f"{imaging_source.url}/rad69", [], [EXPLICIT_LE])
    assert fault.value.status == 400 and "DocumentRequest" in fault.value.fault.reason
    ct = pydicom.dcmread(stored_samples["CT"])
    with pytest.raises(SoapFaultError) as fault:
        await rad69(client, f"{imaging_source.url}/rad69", [_doc(ct, imaging_source.repository_unique_id)], [])
    assert "TransferSyntaxUID" in fault.value.fault.reason
    with pytest.raises(SoapFaultError) as fault:
        await client.call(f"{imaging_source.url}/rad69", ACTION_ITI43,
                          etree.Element(qn(XDSI, "RetrieveImagingDocumentSetRequest")))
    assert ACTION_RAD69 in fault.value.fault.reason
