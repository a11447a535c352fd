"""The one list of a patient's documents across the region.

Every configured registry is asked (ITI-18 FindDocuments) at once; then every repository holding
rows is checked and the imaging rows' manifests are read (ITI-43, several per request, kept in the
portal's database so each is read once). Each source has
``query_deadline`` seconds: a registry that fails or is late is listed as such, and the rows of a
repository that fails or is late are marked "source unreachable"; the page is always answered.
Last, each imaging source named by the manifests is asked (QIDO-RS, one search by UID list) whether
it still holds the studies, so "available" on an imaging row means its images can be shown now.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date

from consumer.client.query import find_documents
from consumer.portal import manifests
from consumer.portal.context import Portal
from consumer.portal.search import patient_cx
from ihe.metadata.model import DocumentEntry

log = logging.getLogger(__name__)

DICOM_MODALITY_SCHEME = "1.2.840.10008.2.16.4"
STUDY_UID_TYPE = "urn:ihe:iti:xds:2016:studyInstanceUID"
ACCESSION_TYPE = "urn:ihe:iti:xds:2013:accession"
AVAILABLE = "available"
UNREACHABLE = "source unreachable"
IMAGES_GONE = "images unavailable"
MANIFEST_CONCURRENCY = 4  # ITI-43 requests at once to one repository
MANIFEST_BATCH = 20  # manifests per ITI-43 request (a KOS of 500 images is about 60 kB)
UIDS_PER_SEARCH = 40  # UIDs per QIDO-RS search: keeps the request line well under servers' 8 KiB limits


@dataclass(slots=True)
class Row:
    date: str  # "YYYY-MM-DD HH:MM" (or shorter when the metadata is)
    sort_key: str
    hospital: str
    kind: str  # "imaging" or "document"
    modality: str
    type: str
    description: str
    mime_type: str
    repository_unique_id: str
    document_unique_id: str
    registry: str
    study_uid: str | None = None
    series_count: int | None = None
    image_count: int | None = None
    report_present: bool = False
    status: str = AVAILABLE
    status_reason: str = ""
    import_job: dict | None = None  # the user's hospital's import of this study (consumer.portal.import_study)
    images_at: str | None = None  # the imaging source's DICOMweb root (from the manifest; not shown)


@dataclass(slots=True)
class SourceState:
    name: str
    kind: str  # "registry" or "repository"
    ok: bool
    reason: str = ""
    seconds: float = 0.0


@dataclass(slots=True)
class PatientDocuments:
    patient_id: str
    rows: list[Row]
    sources: list[SourceState] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"patient_id": self.patient_id, "rows": [_row_json(r) for r in self.rows],
                "sources": [asdict(s) for s in self.sources]}


def _row_json(row: Row) -> dict:
    data = asdict(row)
    del data["sort_key"], data["images_at"]
    return data


@dataclass(frozen=True, slots=True)
class Filters:
    hospital: str = ""
    modality: str = ""
    type: str = ""
    date_from: date | None = None
    date_to: date | None = None

    @classmethod
    def from_query(cls, query: dict[str, str]) -> Filters:
        def day(name: str) -> date | None:
            value = (query.get(name) or "").strip()
            if not value:
                return None
            try:
                return date.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{name} must be a date as YYYY-MM-DD, not {value!r}") from None

        first, last = day("from"), day("to")
        if first and last and first > last:
            raise ValueError(f"the date range is empty: from {first} is after to {last}")
        return cls((query.get("hospital") or "").strip(), (query.get("modality") or "").strip(),
                   (query.get("type") or "").strip(), first, last)

    def keep(self, row: Row) -> bool:
        if self.hospital and row.hospital != self.hospital:
            return False
        if self.modality and self.modality not in row.modality.split(", "):
            return False
        if self.type and row.type != self.type:
            return False
        day = row.sort_key[:8]
        if self.date_from and (not day.strip("0") or day < self.date_from.strftime("%Y%m%d")):
            return False
        return not (self.date_to and (not day.strip("0") or day > self.date_to.strftime("%Y%m%d")))


# --- pure: metadata to rows ------------------------------------------------------------------------


def format_dtm(dtm: str | None) -> str:
    """HL7 DTM (``YYYY[MM[DD[hh[mm[ss]]]]]``, UTC) as ``YYYY-MM-DD HH:MM``, as far as it goes."""
    d = (dtm or "").strip()
    if not d.isdigit() or len(d) < 4:
        return ""
    out = d[:4]
    if len(d) >= 6:
        out += "-" + d[4:6]
    if len(d) >= 8:
        out += "-" + d[6:8]
    if len(d) >= 12:
        out += f" {d[8:10]}:{d[10:12]}"
    return out


def reference_values(entry: DocumentEntry, id_type: str) -> set[str]:
    """The values of ``entry``'s referenceIdList of one type (CXi: ``value^^^^type`` or with an authority)."""
    found = set()
    for ref in entry.reference_ids:
        parts = ref.value.split("^")
        if len(parts) >= 5 and parts[4] == id_type and parts[0]:
            found.add(parts[0])
    return found


def is_imaging(entry: DocumentEntry) -> bool:
    return entry.mime_type == "application/dicom" or (
        entry.format_code is not None and entry.format_code.code == manifests.KOS_SOP_CLASS_UID)


def _display(code) -> str:
    if code is None:
        return ""
    return code.display_name.value if code.display_name and code.display_name.value else code.code


def entry_row(entry: DocumentEntry, hospital: str, registry: str) -> Row:
    when = entry.service_start_time or entry.creation_time or ""
    modalities = sorted({c.code for c in entry.event_codes if c.scheme == DICOM_MODALITY_SCHEME})
    imaging = is_imaging(entry)
    studies = reference_values(entry, STUDY_UID_TYPE)
    return Row(
        date=format_dtm(when), sort_key=(when if when.isdigit() else "").ljust(14, "0"), hospital=hospital,
        kind="imaging" if imaging else "document", modality=", ".join(modalities), type=_display(entry.type_code),
        description=(entry.title.value if entry.title else "") or (entry.comments.value if entry.comments else ""),
        mime_type=entry.mime_type or "", repository_unique_id=entry.repository_unique_id or "",
        document_unique_id=entry.unique_id or "", registry=registry,
        study_uid=min(studies) if studies else None, report_present=not imaging)


def mark_reports(rows: list[Row], entries: dict[tuple[str, str], DocumentEntry]) -> None:
    """An imaging row has a report when another document of the patient names its study or accession."""
    studies: set[str] = set()
    accessions: set[str] = set()
    for row in rows:
        if row.kind != "imaging":
            entry = entries[(row.repository_unique_id, row.document_unique_id)]
            studies |= reference_values(entry, STUDY_UID_TYPE)
            accessions |= reference_values(entry, ACCESSION_TYPE)
    for row in rows:
        if row.kind == "imaging":
            entry = entries[(row.repository_unique_id, row.document_unique_id)]
            row.report_present = bool((row.study_uid and row.study_uid in studies)
                                      or reference_values(entry, ACCESSION_TYPE) & accessions)


def newest_first(rows: Iterable[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (r.sort_key, r.document_unique_id), reverse=True)


def apply_manifest(row: Row, info: manifests.ManifestInfo) -> None:
    row.study_uid = info.study_uid
    row.series_count, row.image_count = info.series_count, info.image_count
    row.images_at = manifests.dicomweb_root(info.retrieve_url)


def qido_study_uids(body: bytes) -> set[str]:
    """The Study Instance UIDs (0020000D) of a QIDO-RS study search answer (DICOM JSON)."""
    found = set()
    for item in json.loads(body or b"[]"):
        for value in (item.get("0020000D") or {}).get("Value") or []:
            found.add(str(value))
    return found


# --- I/O ---------------------------------------------------------------------------------------------


async def _ask_registry(portal: Portal, name: str, url: str, cx: str) -> tuple[SourceState, list[DocumentEntry]]:
    started = time.monotonic()
    try:
        async with asyncio.timeout(portal.settings.query_deadline):
            entries = await find_documents(portal.soap, url, cx)
    except TimeoutError:
        return SourceState(name, "registry", False, f"no answer within {portal.settings.query_deadline:g} s",
                           time.monotonic() - started), []
    except Exception as exc:  # transport errors, faults, failure responses: all mean "no rows from here"
        log.warning("registry %s failed: %s", name, exc)
        return SourceState(name, "registry", False, str(exc)[:300], time.monotonic() - started), []
    return SourceState(name, "registry", True, "", time.monotonic() - started), entries


async def _reachable(portal: Portal, url: str) -> None:
    """Any HTTP answer from the repository's endpoint shows it is up (it answers SOAP on POST only)."""
    async with portal.http.get(url, allow_redirects=False) as response:
        await response.read()


async def _visit_repository(portal: Portal, repository_unique_id: str, rows: list[Row],
                            cache: dict[tuple[str, str], manifests.ManifestInfo]) -> SourceState:
    """Check the repository and read its imaging rows' manifests; mark its rows when it fails."""
    hospital = portal.settings.hospital_by_repository(repository_unique_id)
    name = hospital.name if hospital else repository_unique_id
    started = time.monotonic()
    if hospital is None:
        reason = f"repository {repository_unique_id} is not configured in this portal"
        for row in rows:
            row.status, row.status_reason = UNREACHABLE, reason
        return SourceState(name, "repository", False, reason)
    imaging = [r for r in rows if r.kind == "imaging"]
    missing = [r.document_unique_id for r in imaging if (r.repository_unique_id, r.document_unique_id) not in cache]
    semaphore = asyncio.Semaphore(MANIFEST_CONCURRENCY)
    read: dict[str, manifests.ManifestInfo | manifests.ManifestError] = {}
    for row in rows:  # what is already known of a study stays shown even when its source is down now
        known = cache.get((row.repository_unique_id, row.document_unique_id))
        if known is not None:
            apply_manifest(row, known)

    async def fetch(batch: list[str]) -> None:
        async with semaphore:
            read.update(await manifests.fetch_many(portal.soap, hospital.repository_url, repository_unique_id,
                                                   batch))

    async def manifests_read() -> None:
        """The manifests not cached yet, MANIFEST_BATCH per ITI-43, kept; then every imaging row filled in."""
        await asyncio.gather(*(fetch(missing[i:i + MANIFEST_BATCH]) for i in range(0, len(missing), MANIFEST_BATCH)))
        good = {uid: info for uid, info in read.items() if isinstance(info, manifests.ManifestInfo)}
        if good:
            async with portal.pool.acquire() as conn:
                await manifests.store_many(conn, repository_unique_id, good)
        for row in imaging:
            info = read.get(row.document_unique_id)
            if isinstance(info, manifests.ManifestInfo):
                apply_manifest(row, info)
            elif info is not None:
                row.status_reason = str(info)

    try:
        async with asyncio.timeout(portal.settings.query_deadline):
            if missing:  # the ITI-43 answers show the repository is up
                await manifests_read()
            else:
                await _reachable(portal, hospital.repository_url)
    except Exception as exc:
        reason = (f"no answer within {portal.settings.query_deadline:g} s" if isinstance(exc, TimeoutError)
                  else f"{type(exc).__name__}: {exc}"[:300])
        for row in rows:
            row.status, row.status_reason = UNREACHABLE, f"{name}: {reason}"
        return SourceState(name, "repository", False, reason, time.monotonic() - started)
    return SourceState(name, "repository", True, "", time.monotonic() - started)


async def patient_documents(portal: Portal, patient_id: str) -> PatientDocuments:
    """Every document of ``patient_id`` (the affinity-domain id) from every source, newest first."""
    settings = portal.settings
    cx = patient_cx(patient_id, settings)
    answers = await asyncio.gather(*(_ask_registry(portal, r.name, r.url, cx) for r in settings.registries))
    sources = [state for state, _ in answers]
    entries: dict[tuple[str, str], DocumentEntry] = {}
    rows: list[Row] = []
    for (_state, found), registry in zip(answers, settings.registries, strict=True):
        for entry in found:
            key = (entry.repository_unique_id or "", entry.unique_id or "")
            if key in entries:
                continue  # the same document known to two registries
            entries[key] = entry
            hospital = settings.hospital_by_repository(entry.repository_unique_id)
            institution = next((i.split("^")[0] for a in entry.authors for i in a.institutions), "")
            rows.append(entry_row(entry, hospital.name if hospital else institution or key[0], registry.name))
    by_repository: dict[str, list[Row]] = {}
    for row in rows:
        by_repository.setdefault(row.repository_unique_id, []).append(row)
    async with portal.pool.acquire() as conn:
        cache = await manifests.cached(conn, [(r.repository_unique_id, r.document_unique_id)
                                              for r in rows if r.kind == "imaging"])
    sources += await asyncio.gather(*(_visit_repository(portal, uid, rs, cache)
                                      for uid, rs in sorted(by_repository.items())))
    by_source: dict[str, list[Row]] = {}
    for row in rows:
        if row.kind == "imaging" and row.status == AVAILABLE and row.images_at and row.study_uid:
            by_source.setdefault(row.images_at, []).append(row)
    sources += await asyncio.gather(*(_visit_imaging_source(portal, root, rs)
                                      for root, rs in sorted(by_source.items())))
    mark_reports(rows, entries)
    return PatientDocuments(patient_id, newest_first(rows), sources)


async def _visit_imaging_source(portal: Portal, root: str, rows: list[Row]) -> SourceState:
    """Ask the imaging source (QIDO-RS, one study search by UID list) whether it still holds the rows' studies:
    "available" on an imaging row means its images can be shown now. Rows whose study it no longer holds
    are marked "images unavailable"; all its rows "source unreachable" when it fails or is late."""
    name = rows[0].hospital
    started = time.monotonic()
    uids = sorted({r.study_uid for r in rows if r.study_uid})

    async def search(batch: list[str]) -> set[str]:
        headers = {"Accept": "application/dicom+json", **portal.xua_headers()}  # the user's XUA assertion
        async with portal.http.get(f"{root}/studies", allow_redirects=False, headers=headers, params={
                "StudyInstanceUID": ",".join(batch), "includefield": "0020000D"}) as response:
            body = await response.read()
            if response.status not in (200, 204):
                raise ValueError(f"HTTP {response.status}: {body[:200].decode('utf-8', 'replace')}")
            return qido_study_uids(body) if response.status == 200 else set()

    try:
        async with asyncio.timeout(portal.settings.query_deadline):
            found = await asyncio.gather(*(search(uids[i:i + UIDS_PER_SEARCH])
                                           for i in range(0, len(uids), UIDS_PER_SEARCH)))
        present = set().union(*found)
    except Exception as exc:
        reason = (f"no answer within {portal.settings.query_deadline:g} s" if isinstance(exc, TimeoutError)
                  else f"{type(exc).__name__}: {exc}"[:300])
        for row in rows:
            row.status, row.status_reason = UNREACHABLE, f"{name}'s imaging source: {reason}"
        return SourceState(name, "imaging source", False, reason, time.monotonic() - started)
    for row in rows:
        if row.study_uid not in present:
            row.status = IMAGES_GONE
            row.status_reason = f"{name}'s imaging source no longer holds this study (open it to see why)"
    return SourceState(name, "imaging source", True, "", time.monotonic() - started)


def apply_filters(result: PatientDocuments, filters: Filters) -> PatientDocuments:
    return PatientDocuments(result.patient_id, [r for r in result.rows if filters.keep(r)], result.sources)

