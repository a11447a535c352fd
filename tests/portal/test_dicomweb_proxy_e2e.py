"""The proxy in front of a real imaging source process, used by a DICOMweb client nobody here wrote
(dicomweb-client): the study, its metadata and its frames come back as stored, with the portal's URLs."""

from __future__ import annotations

import asyncio

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from tests.conftest import free_port
from tests.imaging_source.conftest import new_imaging_database  # noqa: F401  (fixtures)
from tests.portal.imaging_fixtures import ct_source  # noqa: F401
from tests.portal.viewer_app import SESSION_COOKIE, build_test_app, serve


@pytest.fixture
async def portal(ct_source, tmp_path):  # noqa: F811
    """The test portal (viewer + proxy) with the CT study located at the real imaging source."""
    service, files = ct_source
    study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html></html>")
    port = free_port()
    runner = await serve(build_test_app(dist, {study: f"{service.url}/dicomweb"}), port)
    yield f"http://127.0.0.1:{port}", files
    await runner.cleanup()


def dicomweb(origin: str, signed_in: bool = True) -> DICOMwebClient:
    session = requests.Session()
    if signed_in:
        session.cookies.set(SESSION_COOKIE, "signed-in", domain="127.0.0.1")
    return DICOMwebClient(f"{origin}/dicomweb", session=session)


async def test_dicomweb_client_retrieves_study_metadata_and_frames_through_the_proxy(portal) -> None:
    origin, files = portal
    original = pydicom.dcmread(files[len(files) // 2])
    uids = (original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID)

    def exercise():
        client = dicomweb(origin)
        study = client.retrieve_study(uids[0])
        # The metadata as sent (dicomweb-client rewrites the host of BulkDataURIs it returns).
        metadata = client._session.get(f"{origin}/dicomweb/studies/{uids[0]}/series/{uids[1]}/metadata",
                                       headers={"Accept": "application/dicom+json"}, timeout=30).json()
        frames = client.retrieve_instance_frames(*uids, frame_numbers=[1])
        return study, metadata, frames

    study, metadata, frames = await asyncio.to_thread(exercise)
    assert sorted(i.SOPInstanceUID for i in study) == sorted(pydicom.dcmread(f).SOPInstanceUID for f in files)
    (instance,) = [i for i in study if i.SOPInstanceUID == original.SOPInstanceUID]
    assert instance.PixelData == original.PixelData
    assert len(metadata) == len(files)
    (item,) = [i for i in metadata if i["00080018"]["Value"] == [original.SOPInstanceUID]]
    assert item["7FE00010"]["BulkDataURI"].startswith(f"{origin}/dicomweb/studies/{uids[0]}/series/{uids[1]}/")
    assert frames == [original.PixelData]


async def test_dicomweb_client_without_a_session_is_refused(portal) -> None:
    origin, files = portal
    study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID

    def refused() -> int:
        try:
            dicomweb(origin, signed_in=False).retrieve_study_metadata(study)
        except requests.HTTPError as exc:
            return exc.response.status_code
        return 200

    assert await asyncio.to_thread(refused) == 401
