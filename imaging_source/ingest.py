"""From received bytes to a stored, indexed instance: shared by the Storage SCP and the folder import.

:func:`describe` is pure (a header in, the facts the index needs out, or :class:`RejectedInstance`);
:func:`ingest` does the I/O in the order that keeps nothing half-written: file durable first,
then the index row in one transaction, and the file removed again if the index refuses it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

import asyncpg
import pydicom
import pydicom.datadict
import pydicom.filereader
import pydicom.uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from imaging_source import store
from imaging_source.storage import Storage, StorageError, instance_key, is_uid

log = logging.getLogger(__name__)

# Patient and study attributes kept per study: the manifest copies them unchanged.
PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "TypeOfPatientID",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence", "PatientComments",
    "EthnicGroup", "PatientAge", "PatientSize", "PatientWeight",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "ProcedureCodeSequence",
    "ReferencedStudySequence", "RequestAttributesSequence", "Modality", "TimezoneOffsetFromUTC",
)


class RejectedInstance(Exception):
    """The object cannot be kept; ``reason`` is logged and ``status`` is the DICOM failure status."""

    def __init__(self, reason: str, status: int = 0xC000) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(slots=True)
class InstanceInfo:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str
    patient_issuer_oid: str | None
    patient_issuer_ns: str | None
    accession_number: str | None
    header: dict[str, Any]
    modality: str | None
    body_part: str | None
    anatomic_region: str | None
    series_number: int | None
    series_description: str | None
    instance_number: int | None
    number_of_frames: int | None

    def storage_key(self, data: bytes) -> str:
        """The key of these bytes of this instance (content-versioned, see storage.instance_key)."""
        return self.storage_key_of(hashlib.sha256(data).hexdigest())

    def storage_key_of(self, sha256_hex: str) -> str:
        """The key of the bytes with this SHA-256 (hex), for a caller that hashed them as they arrived."""
        return instance_key(self.study_uid, self.series_uid, self.sop_instance_uid, sha256_hex[:16])


def _str(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def patient_issuer(ds: Dataset, default_oid: str | None, default_ns: str | None) -> tuple[str | None, str | None]:
    """(OID, namespace) of the hospital number's assigning authority: from the header, else configured."""
    oid = None
    for item in ds.get("IssuerOfPatientIDQualifiersSequence") or []:
        if item.get("UniversalEntityIDType") == "ISO" and is_uid(str(item.get("UniversalEntityID") or "")):
            oid = str(item.UniversalEntityID)
    ns = _str(ds, "IssuerOfPatientID")
    return oid or default_oid, ns or default_ns


def describe(ds: Dataset, transfer_syntax_uid: str, *, issuer_oid: str | None = None,
             issuer_ns: str | None = None) -> InstanceInfo:
    """The index facts of one instance header, or RejectedInstance when it cannot be kept."""
    uids = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = _str(ds, keyword)
        if not is_uid(value):
            raise RejectedInstance(f"{keyword} is missing or not a valid UID: {value!r}", 0xA900)
        uids[keyword] = value
    if not is_uid(transfer_syntax_uid):
        raise RejectedInstance(f"transfer syntax {transfer_syntax_uid!r} is not a UID", 0xA900)
    patient_id = _str(ds, "PatientID")
    if not patient_id:
        raise RejectedInstance("the instance has no Patient ID: it cannot be assigned to a patient", 0xA900)
    oid, ns = patient_issuer(ds, issuer_oid, issuer_ns)
    header = Dataset()
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in ds:
            header[keyword] = ds[keyword]
    region = None
    for item in ds.get("AnatomicRegionSequence") or []:
        if item.get("CodeValue") and item.get("CodingSchemeDesignator"):
            region = f"{item.CodeValue}^^^{item.CodingSchemeDesignator}^{item.get('CodeMeaning', '')}"
            break
    try:
        header_json = header.to_json_dict()
    except Exception as exc:  # a malformed element in the patient/study attributes
        raise RejectedInstance(f"patient/study attributes cannot be read: {exc}", 0xA900) from None
    return InstanceInfo(
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        transfer_syntax_uid=transfer_syntax_uid,
        patient_id=patient_id,
        patient_issuer_oid=oid,
        patient_issuer_ns=ns,
        accession_number=_str(ds, "AccessionNumber"),
        header=header_json,
        modality=_str(ds, "Modality"),
        body_part=_str(ds, "BodyPartExamined"),
        anatomic_region=region,
        series_number=_int(ds, "SeriesNumber"),
        series_description=_str(ds, "SeriesDescription"),
        instance_number=_int(ds, "InstanceNumber"),
        number_of_frames=_int(ds, "NumberOfFrames"),
    )


# Every element describe() reads, and the last of them in tag order: a dataset read may stop past it.
HEADER_KEYWORDS = (*PATIENT_STUDY_KEYWORDS, "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "BodyPartExamined",
                   "AnatomicRegionSequence", "SeriesNumber", "SeriesDescription", "InstanceNumber", "NumberOfFrames")
HEADER_TAGS = sorted({int(pydicom.datadict.tag_for_keyword(k)) for k in HEADER_KEYWORDS})
LAST_HEADER_TAG = HEADER_TAGS[-1]


def read_dataset_header(fp: BinaryIO, transfer_syntax_uid: str) -> tuple[Dataset, bool]:
    """The elements describe() needs from a dataset stream (no file meta) in this transfer syntax, and whether
    the read got past the last of them (False: the stream ended first, so it may have been cut short).

    Values of other elements are skipped, not decoded, and reading stops at the first element after
    the last one needed: what the index needs costs the same for a 0.5 MB CT slice and a 2 GB
    multi-frame object.
    """
    try:
        ts = pydicom.uid.UID(transfer_syntax_uid)
        implicit, little = ts.is_implicit_VR, ts.is_little_endian
        deflated = ts.is_deflated
    except ValueError:
        raise RejectedInstance(f"transfer syntax {transfer_syntax_uid!r} is not known", 0xC000) from None
    if deflated:
        fp = io.BytesIO(zlib.decompressobj(-zlib.MAX_WBITS).decompress(fp.read()))
    passed = False

    def stop(tag: int, vr: object, length: int) -> bool:
        nonlocal passed
        passed = int(tag) > LAST_HEADER_TAG
        return passed

    try:
        ds = pydicom.filereader.read_dataset(fp, implicit, little, stop_when=stop, specific_tags=HEADER_TAGS)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, NotImplementedError, zlib.error) as exc:
        raise RejectedInstance(f"not a readable DICOM dataset: {exc}", 0xC000) from None
    return ds, passed


def read_header(data: bytes) -> tuple[Dataset, str]:
    """Parse a DICOM Part 10 file's header (no pixel data) and its transfer syntax."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise RejectedInstance(f"not a readable DICOM Part 10 object: {exc}", 0xC000) from None
    ts = _str(ds.file_meta, "TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not ts:
        raise RejectedInstance("the file meta information has no Transfer Syntax UID", 0xC000)
    # The file meta must agree with the dataset, or retrieval would hand out a different object.
    meta_sop = _str(ds.file_meta, "MediaStorageSOPInstanceUID")
    if meta_sop and _str(ds, "SOPInstanceUID") and meta_sop != _str(ds, "SOPInstanceUID"):
        raise RejectedInstance("Media Storage SOP Instance UID differs from the SOP Instance UID", 0xA900)
    return ds, ts


@dataclass(slots=True)
class StoredInstance:
    info: InstanceInfo
    key: str
    size: int
    # These very bytes were already stored under this key (the same instance sent again): the file
    # is not ours to remove if this copy is refused.
    replaced: bool


def prepare(data: bytes, *, issuer_oid: str | None = None, issuer_ns: str | None = None) -> tuple[InstanceInfo, str]:
    """The index facts and storage key of one Part 10 object (pure), or RejectedInstance."""
    ds, ts = read_header(data)
    info = describe(ds, ts, issuer_oid=issuer_oid, issuer_ns=issuer_ns)
    return info, info.storage_key(data)


def store_file(data: bytes, storage: Storage, *, issuer_oid: str | None = None,
               issuer_ns: str | None = None) -> StoredInstance:
    """Check and durably write one Part 10 object (blocking: run it off the event loop).

    Keys are content-versioned, so a different copy of a known SOP instance goes to a new file
    and the copy the index points at stays intact until the index has moved to the new one.
    """
    info, key = prepare(data, issuer_oid=issuer_oid, issuer_ns=issuer_ns)
    if storage.holds(key, hashlib.sha256(data).hexdigest()):
        return StoredInstance(info, key, len(data), True)
    return StoredInstance(info, key, storage.put(key, data), False)


async def index_stored(stored: StoredInstance, storage: Storage, pool: asyncpg.Pool) -> bool:
    """Index a durably written instance; True when it is new.

    On failure the new file is removed again (the previous copy, if any, is untouched); on
    success a previous copy the index no longer points at is removed.
    """
    try:
        async with pool.acquire() as conn:
            is_new, previous_key = await store.record_instance(conn, stored.info, stored.key, stored.size)
    except BaseException as exc:
        if not stored.replaced:
            storage.delete(stored.key)
        if isinstance(exc, asyncpg.PostgresError | OSError):
            raise StorageError(f"could not index {stored.info.sop_instance_uid}: {exc}") from exc
        raise
    if previous_key and previous_key != stored.key:
        storage.delete(previous_key)
    return is_new


async def ingest(data: bytes, storage: Storage, pool: asyncpg.Pool, *, issuer_oid: str | None = None,
                 issuer_ns: str | None = None) -> tuple[InstanceInfo, bool]:
    """Keep one Part 10 object: (info, whether it is new). Raises RejectedInstance or StorageError."""
    import asyncio

    stored = await asyncio.to_thread(store_file, data, storage, issuer_oid=issuer_oid, issuer_ns=issuer_ns)
    return stored.info, await index_stored(stored, storage, pool)
