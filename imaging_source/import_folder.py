"""Import a folder of DICOM Part 10 files, as if each had come by C-STORE (same checks, same index)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from imaging_source.ingest import RejectedInstance, ingest
from imaging_source.storage import Storage, StorageError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ImportReport:
    stored: int = 0
    new: int = 0
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)


def dicom_files(folder: Path) -> Iterator[Path]:
    """Every regular file under ``folder`` (sorted, hidden ones skipped); DICOM or not is checked on read."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            yield path


async def import_folder(folder: Path, storage: Storage, pool: asyncpg.Pool, *, issuer_oid: str | None = None,
                        issuer_ns: str | None = None) -> ImportReport:
    report = ImportReport()
    for path in dicom_files(folder):
        try:
            data = path.read_bytes()
            info, is_new = await ingest(data, storage, pool, issuer_oid=issuer_oid, issuer_ns=issuer_ns)
        except RejectedInstance as exc:
            report.rejected.append((path, exc.reason))
            continue
        except (StorageError, OSError) as exc:
            report.rejected.append((path, str(exc)))
            continue
        report.stored += 1
        report.new += int(is_new)
        report.studies.add(info.study_uid)
    return report
