"""Can a study's images be shown now, and if not, why: checked when the viewer is opened on a study,
so a clinician sees a page naming the reason instead of an empty OHIF.

The portal knows a study from its KOS manifest (kept by :mod:`consumer.portal.manifests`). Opening
it asks the imaging source the manifest names (QIDO-RS, within ``query_deadline``):

- the region's access policy does not let the user see it: **not available** (said as for a study that is not
  registered, so that the page does not tell which; the portal checks this first, see :mod:`consumer.portal.app`);
- no manifest of the region names the study: **unknown** (a wrong or stale link, or not published yet);
- the source does not answer: **source unreachable**;
- the source answers but no longer has the study: the registry is asked (ITI-18 GetDocuments, which
  returns every availability status) for the manifest: Deprecated means the source **withdrew** the
  study (IOCM: its images were rejected and the manifest deprecated, ITI-57); still Approved means the
  images were **deleted** at the source while the manifest still lists them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass

import aiohttp

from consumer.client.query import get_documents
from consumer.portal.aggregate import qido_study_uids
from consumer.portal.context import Portal
from consumer.portal.manifests import dicomweb_root
from ihe.metadata.model import AvailabilityStatus

log = logging.getLogger(__name__)

AVAILABLE = "available"
UNKNOWN = "unknown"
UNREACHABLE = "source unreachable"
WITHDRAWN = "withdrawn"
DELETED = "deleted"
NOT_AVAILABLE = "not available"  # to this user, under the region's access policy (or not registered at all)
HTTP_STATUS = {AVAILABLE: 200, UNKNOWN: 404, UNREACHABLE: 502, WITHDRAWN: 410, DELETED: 410, NOT_AVAILABLE: 403}
TITLES = {UNKNOWN: "Study not known", UNREACHABLE: "Image source unreachable",
          WITHDRAWN: "Study withdrawn by its source", DELETED: "Images no longer available",
          NOT_AVAILABLE: "Study not available"}


@dataclass(frozen=True, slots=True)
class StudyState:
    study_uid: str
    state: str  # one of AVAILABLE, UNKNOWN, UNREACHABLE, WITHDRAWN, DELETED
    hospital: str = ""
    reason: str = ""
    manifest: str = ""  # the manifest's document uniqueId, when one is known

    @property
    def ok(self) -> bool:
        return self.state == AVAILABLE

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.state]

    @property
    def title(self) -> str:
        return TITLES.get(self.state, "Images available")

    def to_json(self) -> dict:
        return {**asdict(self), "title": self.title}


# --- pure ------------------------------------------------------------------------------------------


def gone_state(study_uid: str, hospital: str, manifest: str, image_count: int,
               manifest_status: str | None, registry_problem: str = "") -> StudyState:
    """The state of a study its source answered for but no longer holds, given its manifest's status at the
    registry (None: the registry has no entry for it or could not be asked)."""
    if manifest_status == AvailabilityStatus.DEPRECATED:
        return StudyState(study_uid, WITHDRAWN, hospital, (
            f"{hospital} withdrew this study: its images were rejected at the source and the study's manifest "
            f"(document {manifest}) is deprecated in the registry, so it is no longer shared."), manifest)
    said = f"the manifest (document {manifest}) lists {image_count} image{'s' if image_count != 1 else ''}"
    if manifest_status == AvailabilityStatus.APPROVED:
        said += " and is still approved in the registry"
    elif registry_problem:
        said += f"; the registry could not be asked whether it was withdrawn ({registry_problem})"
    return StudyState(study_uid, DELETED, hospital, (
        f"{hospital} no longer holds the images of this study: they were deleted at the source, although {said}."),
        manifest)


# --- I/O -------------------------------------------------------------------------------------------


async def _newest_manifest(portal: Portal, study_uid: str):
    async with portal.pool.acquire() as conn:
        return await conn.fetchrow(
            "SELECT repository_unique_id, document_unique_id, image_count, retrieve_url FROM portal_manifest "
            "WHERE study_uid = $1 ORDER BY retrieve_url IS NULL, fetched_at DESC LIMIT 1", study_uid)


async def _source_has(portal: Portal, root: str, study_uid: str) -> bool:
    """QIDO-RS study search by UID at the source: does it still hold the study? (Errors propagate.)"""
    async with portal.http.get(f"{root}/studies", params={"StudyInstanceUID": study_uid, "includefield": "0020000D"},
                               headers={"Accept": "application/dicom+json", **portal.xua_headers()},
                               allow_redirects=False) as response:
        body = await response.read()
        if response.status == 204:
            return False
        if response.status != 200:
            raise aiohttp.ClientResponseError(response.request_info, (), status=response.status,
                                              message=body.decode("utf-8", "replace")[:200] or response.reason)
        return study_uid in qido_study_uids(body)


async def _manifest_status(portal: Portal, document_unique_id: str) -> tuple[str | None, str]:
    """(availability status of the manifest at the first registry that knows it, problems met asking)."""
    problems = []
    for registry in portal.settings.registries:
        try:
            async with asyncio.timeout(portal.settings.query_deadline):
                entries = await get_documents(portal.soap, registry.url, [document_unique_id])
        except Exception as exc:  # transport errors, faults, failures: this registry cannot say
            problems.append(f"{registry.name}: {type(exc).__name__}: {exc}"[:200])
            continue
        for entry in entries:
            if entry.unique_id == document_unique_id and entry.status:
                return str(entry.status), ""
    return None, "; ".join(problems)


async def study_state(portal: Portal, study_uid: str) -> StudyState:
    """Where ``study_uid``'s images stand right now (see the module's docstring)."""
    manifest = await _newest_manifest(portal, study_uid)
    if manifest is None:
        return StudyState(study_uid, UNKNOWN, reason=(
            "no imaging source of this region has shared a study with this UID (no manifest in the patient "
            "lists names it): the link may be wrong, or the study is not published yet."))
    hospital_entry = portal.settings.hospital_by_repository(manifest["repository_unique_id"])
    hospital = hospital_entry.name if hospital_entry else manifest["repository_unique_id"]
    document = manifest["document_unique_id"]
    root = dicomweb_root(manifest["retrieve_url"])
    if root is None:
        return StudyState(study_uid, UNREACHABLE, hospital, (
            f"the study's manifest (document {document}) gives no web address for its images, so the viewer "
            "cannot fetch them"), document)
    try:
        async with asyncio.timeout(portal.settings.query_deadline):
            present = await _source_has(portal, root, study_uid)
    except TimeoutError:
        return StudyState(study_uid, UNREACHABLE, hospital, (
            f"{hospital}'s imaging source ({root}) did not answer within {portal.settings.query_deadline:g} s; "
            "try again later."), document)
    except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: an answer that is not DICOM JSON
        log.warning("imaging source %s unreachable for study %s: %s", root, study_uid, exc)
        what = f"it answered HTTP {exc.status}" if isinstance(exc, aiohttp.ClientResponseError) else \
            f"{type(exc).__name__}: {exc}"
        return StudyState(study_uid, UNREACHABLE, hospital, (
            f"{hospital}'s imaging source ({root}) cannot be reached ({what}); try again later."[:500]), document)
    if present:
        return StudyState(study_uid, AVAILABLE, hospital, manifest=document)
    status, problem = await _manifest_status(portal, document)
    return gone_state(study_uid, hospital, document, manifest["image_count"], status, problem)
