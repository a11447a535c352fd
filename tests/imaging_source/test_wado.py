"""Serving images: every stored instance read back with dicomweb-client (WADO-RS) and by WADO-URI,
pixel data byte-identical to what was sent; metadata, rendered JPEG/PNG and the refusals."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _get(url: str, accept: str | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def client(imaging_source) -> DICOMwebClient:
    return DICOMwebClient(f"{imaging_source.url}/dicomweb")


def test_retrieve_every_study_as_stored_is_byte_identical(client, stored_samples):
    originals = {}
    for path in stored_samples.values():
        ds = pydicom.dcmread(path)
        originals.setdefault(ds.StudyInstanceUID, {})[ds.SOPInstanceUID] = ds
    for study_uid, expected in originals.items():
        got = client.retrieve_study(study_uid, media_types=(("application/dicom", "*"),))
        got_by_uid = {ds.SOPInstanceUID: ds for ds in got}
        assert set(expected) <= set(got_by_uid)
        for uid, original in expected.items():
            ds = got_by_uid[uid]
            assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
            assert ds.PixelData == original.PixelData
            assert ds.PatientID == original.PatientID


def test_retrieve_series_and_instance(client, stored_samples):
    original = pydicom.dcmread(stored_samples["US"])
    series = client.retrieve_series(original.StudyInstanceUID, original.SeriesInstanceUID,
                                    media_types=(("application/dicom", "*"),))
    assert original.SOPInstanceUID in {ds.SOPInstanceUID for ds in series}
    instance = client.retrieve_instance(original.StudyInstanceUID, original.SeriesInstanceUID,
                                        original.SOPInstanceUID, media_types=(("application/dicom", "*"),))
    assert instance.PixelData == original.PixelData


def test_explicit_transfer_syntax_transcodes_losslessly(client, stored_samples):
    original = pydicom.dcmread(stored_samples["CR"])  # JPEG 2000 lossless as stored
    ds = client.retrieve_instance(original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID,
                                  media_types=(("application/dicom", EXPLICIT_LE),))
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_default_transfer_syntax_is_explicit_little_endian(imaging_source, stored_samples):
    """No transfer-syntax parameter: Explicit VR Little Endian, as PS3.18 makes the default."""
    from ihe.mtom import split_parts

    original = pydicom.dcmread(stored_samples["US"])  # JPEG 2000 lossless as stored
    status, headers, body = _get(f"{imaging_source.url}/dicomweb/studies/{original.StudyInstanceUID}/series/"
                                 f"{original.SeriesInstanceUID}", 'multipart/related; type="application/dicom"')
    assert status == 200
    parts, _ = split_parts(headers["Content-Type"], body)
    assert [p.headers["content-type"] for p in parts] == [f"application/dicom; transfer-syntax={EXPLICIT_LE}"]
    ds = pydicom.dcmread(io.BytesIO(b"".join(parts[0].chunks)))
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_metadata_is_dicom_json(client, stored_samples):
    original = pydicom.dcmread(stored_samples["MR"])
    items = client.retrieve_study_metadata(original.StudyInstanceUID)
    item = next(i for i in items if i["00080018"]["Value"][0] == original.SOPInstanceUID)
    ds = pydicom.Dataset.from_json(item, bulk_data_uri_handler=lambda *a: b"")
    assert ds.PatientName == original.PatientName
    assert ds.Rows == original.Rows
    assert item["7FE00010"]["BulkDataURI"].endswith(
        f"/series/{original.SeriesInstanceUID}/instances/{original.SOPInstanceUID}/frames/1")


def test_frames_are_the_native_pixel_bytes(client, stored_samples):
    original = pydicom.dcmread(stored_samples["CT"])
    frames = client.retrieve_instance_frames(original.StudyInstanceUID, original.SeriesInstanceUID,
                                             original.SOPInstanceUID, frame_numbers=[1])
    assert frames == [original.PixelData]


@pytest.mark.parametrize(("media", "fmt"), [("image/jpeg", "JPEG"), ("image/png", "PNG")])
def test_rendered(client, stored_samples, media, fmt):
    for key in ("CT", "US"):
        original = pydicom.dcmread(stored_samples[key])
        body = client.retrieve_instance_rendered(original.StudyInstanceUID, original.SeriesInstanceUID,
                                                 original.SOPInstanceUID, media_types=(media,))
        image = Image.open(io.BytesIO(body))
        assert image.format == fmt
        assert image.size == (original.Columns, original.Rows)
        frame = client.retrieve_instance_frames_rendered(original.StudyInstanceUID, original.SeriesInstanceUID,
                                                         original.SOPInstanceUID, frame_numbers=[1],
                                                         media_types=(media,))
        assert Image.open(io.BytesIO(frame)).size == (original.Columns, original.Rows)


def test_png_rendering_follows_the_pixels(imaging_source, stored_samples):
    """The rendered grey levels are a monotonic mapping of the stored values, not a blank or a constant."""
    original = pydicom.dcmread(stored_samples["CT"])
    url = (f"{imaging_source.url}/dicomweb/studies/{original.StudyInstanceUID}/series/"
           f"{original.SeriesInstanceUID}/instances/{original.SOPInstanceUID}/rendered")
    status, headers, body = _get(url, "image/png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    grey = np.asarray(Image.open(io.BytesIO(body)))
    pixels = original.pixel_array
    assert grey.min() == 0 and grey.max() == 255
    assert grey[np.unravel_index(pixels.argmax(), pixels.shape)] == 255
    assert grey[np.unravel_index(pixels.argmin(), pixels.shape)] == 0


def test_wado_rs_refusals(imaging_source, stored_samples):
    original = pydicom.dcmread(stored_samples["CR"])
    base = f"{imaging_source.url}/dicomweb/studies/{original.StudyInstanceUID}"
    status, _, body = _get(f"{base}/series/1.2.3.4/instances/{original.SOPInstanceUID}",
                           'multipart/related; type="application/dicom"; transfer-syntax=*')
    assert status == 404 and b"not known" in body
    status, _, body = _get(base, 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50')
    assert status == 406 and b"cannot be supplied" in body
    status, _, _ = _get(base, "text/html")
    assert status == 406
    status, _, _ = _get(f"{imaging_source.url}/dicomweb/studies/not-a-uid")
    assert status == 400


def test_wado_rs_metadata_headers(imaging_source, stored_samples):
    original = pydicom.dcmread(stored_samples["CT"])
    status, headers, body = _get(f"{imaging_source.url}/dicomweb/studies/{original.StudyInstanceUID}/metadata",
                                 "application/dicom+json")
    assert status == 200 and headers["Content-Type"].startswith("application/dicom+json")
    assert {i["0020000E"]["Value"][0] for i in json.loads(body)} == {original.SeriesInstanceUID}


def _wado_uri(source, ds, **params) -> str:
    query = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
             "objectUID": ds.SOPInstanceUID, **params}
    return f"{source.url}/wado?" + "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in query.items())


def test_wado_uri_dicom(imaging_source, stored_samples):
    for key in ("CT", "MR", "US", "CR"):
        raw = stored_samples[key].read_bytes()
        original = pydicom.dcmread(io.BytesIO(raw))
        status, headers, body = _get(_wado_uri(imaging_source, original, contentType="application/dicom",
                                               transferSyntax=original.file_meta.TransferSyntaxUID))
        assert status == 200 and headers["Content-Type"] == "application/dicom"
        assert pydicom.dcmread(io.BytesIO(body)).PixelData == original.PixelData
    # No transferSyntax: Explicit VR Little Endian, decoded from the stored JPEG 2000.
    original = pydicom.dcmread(stored_samples["US"])
    status, _, body = _get(_wado_uri(imaging_source, original, contentType="application/dicom"))
    ds = pydicom.dcmread(io.BytesIO(body))
    assert status == 200 and ds.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_wado_uri_jpeg(imaging_source, stored_samples):
    original = pydicom.dcmread(stored_samples["MR"])
    status, headers, body = _get(_wado_uri(imaging_source, original, contentType="image/jpeg"))
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(body)).size == (original.Columns, original.Rows)
    status, _, body = _get(_wado_uri(imaging_source, original))  # image/jpeg is the default
    assert status == 200 and Image.open(io.BytesIO(body)).format == "JPEG"


def test_wado_uri_refusals(imaging_source, stored_samples):
    original = pydicom.dcmread(stored_samples["CT"])
    status, _, body = _get(_wado_uri(imaging_source, original, requestType="WADOX"))
    assert status == 400 and b"requestType" in body
    wrong_series = pydicom.Dataset()
    wrong_series.StudyInstanceUID, wrong_series.SeriesInstanceUID = original.StudyInstanceUID, "1.2.3"
    wrong_series.SOPInstanceUID = original.SOPInstanceUID
    status, _, _ = _get(_wado_uri(imaging_source, wrong_series))
    assert status == 404
    status, _, _ = _get(_wado_uri(imaging_source, original, contentType="application/pdf"))
    assert status == 406
    cr = pydicom.dcmread(stored_samples["CR"])
    status, _, _ = _get(_wado_uri(imaging_source, cr, contentType="application/dicom",
                                  transferSyntax="1.2.840.10008.1.2.4.50"))
    assert status == 406
    status, _, body = _get(_wado_uri(imaging_source, original, frameNumber="7"))
    assert status == 400 and b"frame 7" in body


def test_rendered_viewport_is_width_then_height_and_bounded(imaging_source, stored_samples):
    original = pydicom.dcmread(stored_samples["CT"])
    url = (f"{imaging_source.url}/dicomweb/studies/{original.StudyInstanceUID}/series/"
           f"{original.SeriesInstanceUID}/instances/{original.SOPInstanceUID}/rendered")
    status, _, body = _get(f"{url}?viewport=64,32", "image/png")
    assert status == 200 and Image.open(io.BytesIO(body)).size == (64, 32)  # PIL: (width, height)
    status, _, body = _get(f"{url}?viewport=100000,100000", "image/png")
    assert status == 400 and b"between 1 and" in body
    status, _, body = _get(_wado_uri(imaging_source, original, rows="100000"))
    assert status == 400 and b"between 1 and" in body
    status, _, body = _get(_wado_uri(imaging_source, original, rows="32", columns="64"))
    assert status == 200 and Image.open(io.BytesIO(body)).size == (64, 32)


def test_wado_uri_defaults_to_dicom_for_objects_without_pixels(imaging_source, tmp_path):
    """PS3.18: with no contentType, non-image objects (here a Comprehensive SR) come as application/dicom."""
    from pydicom.data import get_testdata_file

    from tests.imaging_source.conftest import send_with_pynetdicom

    sr = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    sr.PatientID = "RR8000042"  # pydicom's sample has none, and an instance without one is refused
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    assert send_with_pynetdicom(imaging_source.dicom_port, [path]) == [0]
    status, headers, body = _get(_wado_uri(imaging_source, sr))
    assert status == 200 and headers["Content-Type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID == sr.SOPInstanceUID
    status, _, body = _get(_wado_uri(imaging_source, sr, contentType="image/jpeg"))
    assert status == 400
