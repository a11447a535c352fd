"""A real imaging source process holding a CT series, for the portal's viewer and proxy tests (import the
fixture into a test module to use it)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.imaging_source.conftest import sample_path, send_with_pynetdicom, start_imaging_source

SLICES = 20


def ct_series(folder: Path, slices: int = SLICES) -> list[Path]:
    """pydicom's CT_small as a stack of ``slices`` slices 5 mm apart (one study, one series, new SOP UIDs),
    so the viewer loads a real series rather than one image."""
    original = pydicom.dcmread(sample_path("CT_small.dcm"))
    x, y, z = (float(v) for v in original.ImagePositionPatient)
    paths = []
    for n in range(slices):
        ds = original.copy()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = [x, y, z + 5.0 * n]
        ds.SliceLocation = z + 5.0 * n
        path = folder / f"ct{n + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def ct_source(new_imaging_database, tmp_path_factory):
    """(running imaging source, the CT slice files it holds)."""
    files = ct_series(tmp_path_factory.mktemp("ct-series"))
    service = start_imaging_source(new_imaging_database(), tmp_path_factory.mktemp("ct-instances"),
                                   "--quiet-period", "3600")
    try:
        assert send_with_pynetdicom(service.dicom_port, files) == [0] * len(files)
        yield service, files
    finally:
        service.stop()
