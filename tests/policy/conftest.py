"""The policy tests use the imaging source's fixtures (a fresh imaging database, the DICOM samples)."""

from tests.imaging_source.conftest import new_imaging_database, samples  # noqa: F401
