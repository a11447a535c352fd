"""A real imaging source process holding pydicom's CT study, for the portal's viewer and proxy tests
(import the fixture into a test module to use it)."""

from __future__ import annotations

import pytest

from tests.imaging_source.conftest import sample_path, send_with_pynetdicom, start_imaging_source


@pytest.fixture(scope="module")
def ct_source(new_imaging_database, tmp_path_factory):
    """(running imaging source, path of the CT file it holds)."""
    ct = sample_path("CT_small.dcm")
    service = start_imaging_source(new_imaging_database(), tmp_path_factory.mktemp("ct-instances"),
                                   "--quiet-period", "3600")
    try:
        assert send_with_pynetdicom(service.dicom_port, [ct]) == [0]
        yield service, ct
    finally:
        service.stop()
