"""Study completion and publication: from "instances arrived" to "manifest registered".

A study is complete once no instance arrived for the quiet period. Then its DICOM Patient ID is
mapped to the affinity domain (PIX query, ITI-9; unmapped studies wait and are retried), the KOS
manifest is built over every instance, kept, and queued; queued manifests are sent by RAD-68 and
retried with exponential back-off until the repository takes them. A study that gets new
instances after publication gets a new manifest that replaces (RPLC) the published one.
Every step's state is in PostgreSQL, so a restart resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid

from pydicom.dataset import Dataset

from ihe.hl7 import PixQueryError, pix_query
from ihe.metadata.model import Identifiable
from imaging_source import metadata_cache, rejection, store
from imaging_source.context import ImagingSource
from imaging_source.corrections import Corrections
from imaging_source.manifest import ReferencedInstance, RetrieveInfo, build_manifest, header_from_json
from imaging_source.publish import ManifestCodes, ManifestDocument, PublishError, manifest_submission, parse_code
from imaging_source.storage import StorageError, manifest_key

log = logging.getLogger(__name__)


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds to wait after the ``attempts``-th failure: doubling from ``initial``, capped at ``maximum``."""
    return min(maximum, initial * (2 ** max(0, attempts - 1)))


def manifest_codes(settings) -> ManifestCodes:
    return ManifestCodes(
        class_code=parse_code(settings.class_code),
        default_type_code=parse_code(settings.type_code),
        facility_type_code=parse_code(settings.healthcare_facility_type_code),
        practice_setting_code=parse_code(settings.practice_setting_code),
        confidentiality_code=parse_code(settings.confidentiality_code),
        content_type_code=parse_code(settings.content_type_code),
        language_code=settings.language_code,
    )


def study_header(row) -> Dataset:
    """The study's patient/study attributes as received (asyncpg gives jsonb as text)."""
    value = row["header"]
    return header_from_json(value if isinstance(value, dict) else json.loads(value))


def local_patient(row) -> Identifiable:
    return Identifiable(row["patient_id"], row["patient_issuer_oid"], row["patient_issuer_ns"])


class Tracker:
    """Runs the completion/publication steps; :meth:`run_once` is one pass, :meth:`run` loops."""

    def __init__(self, source: ImagingSource, client=None) -> None:
        self.source = source
        self.settings = source.settings
        self.client = client
        self.codes = manifest_codes(source.settings)
        self.wakeup = asyncio.Event()
        self.corrections = Corrections()

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the loop alive; the state is in the database
                log.exception("publication pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), self.settings.tracker_interval)
            self.wakeup.clear()

    def soap_client(self):
        if self.client is None:
            from consumer.client.soap import SoapClient

            auditor = self.source.extras.get("auditor")
            hook = None
            if auditor is not None:  # the imaging source's own record of its RAD-68 (ITI-41) and ITI-57
                from ihe.audit.client import ClientAudit
                from ihe.audit.events import RAD68
                from ihe.namespaces import ACTION_ITI41

                settings = self.source.settings
                hook = ClientAudit(auditor, settings.ae_title, event_types={ACTION_ITI41: RAD68})
            self.client = SoapClient(timeout=120, on_exchange=hook)
        return self.client

    async def run_once(self) -> None:
        try:  # IOCM first, so that no manifest built in this pass lists a rejected instance
            await rejection.process_rejections(self.source)
        except Exception:
            log.exception("IOCM rejection pass failed")
        try:
            await self.corrections.run(self.source)
        except Exception:
            log.exception("pass over instances sent again failed")
        async with self.source.pool.acquire() as conn:
            studies = await store.complete_studies(conn, self.settings.quiet_period)
        # One study or manifest that fails unexpectedly must neither block the others nor fail unseen:
        # it is recorded (listed with its error) and retried with back-off like any other failure.
        for study in studies:
            try:
                await self.complete_study(study)
            except Exception as exc:
                log.exception("study %s: the manifest could not be built", study["study_uid"])
                async with self.source.pool.acquire() as conn:
                    await store.mark_study_failed(conn, study["study_uid"], f"the manifest could not be built: "
                                                  f"{type(exc).__name__}: {exc}", self._delay(study["attempts"] + 1))
        async with self.source.pool.acquire() as conn:
            manifests = await store.due_manifests(conn)
        for manifest in manifests:
            await self.publish(manifest)
        async with self.source.pool.acquire() as conn:
            withdrawn = await rejection.due_deprecations(conn)
        for manifest in withdrawn:
            await rejection.deprecate(self, manifest)
        async with self.source.pool.acquire() as conn:
            refused = await store.due_rechecks(conn)
        for study in refused:
            await self.recheck(study)

    # --- patient mapping -----------------------------------------------------------------------

    async def affinity_patient(self, study) -> str | None:
        """The affinity-domain patient id (CX) of a study, asking PIX when not known yet."""
        if study["affinity_patient_id"] and not study["needs_action"]:  # after a refusal: ask PIX again
            return study["affinity_patient_id"]
        local = local_patient(study)
        settings = self.settings
        async with self.source.pool.acquire() as conn:
            if not settings.affinity_domain_oid:
                # A network without an affinity domain of its own: the hospital number is the XDS id.
                if not local.authority_oid:
                    await store.mark_waiting_patient(conn, study["study_uid"], "the hospital number has no "
                                                     "assigning authority OID (set patient-id-issuer-oid)",
                                                     self._delay(study["attempts"] + 1))
                    return None
                cx = Identifiable(local.id, local.authority_oid).to_cx()  # id^^^&OID&ISO, no namespace
                await store.set_affinity_patient(conn, study["study_uid"], cx)
                return cx
            if settings.pix_port is None:
                error = "no PIX manager configured (pix-port): the patient cannot be mapped"
            else:
                try:
                    ids = await pix_query(settings.pix_host, settings.pix_port, local, [settings.affinity_domain_oid])
                    mapped = [i for i in ids if i.authority_oid == settings.affinity_domain_oid]
                    if mapped:
                        cx = Identifiable(mapped[0].id, settings.affinity_domain_oid).to_cx()
                        await store.set_affinity_patient(conn, study["study_uid"], cx)
                        log.info("study %s: patient %s is %s", study["study_uid"], local.to_cx(), cx)
                        return cx
                    error = f"PIX knows no affinity-domain id for patient {local.to_cx()} yet"
                except PixQueryError as exc:
                    error = f"PIX query failed: {exc}"
            await store.mark_waiting_patient(conn, study["study_uid"], error, self._delay(study["attempts"] + 1))
        log.info("study %s waits for its patient: %s", study["study_uid"], error)
        return None

    def _delay(self, attempts: int) -> float:
        return backoff(attempts, self.settings.retry_initial, self.settings.retry_max)

    # --- manifest ----------------------------------------------------------------------------------

    async def complete_study(self, study) -> bool:
        """Build and queue the manifest of a complete study; False when it has to wait."""
        study_uid = study["study_uid"]
        if await self.affinity_patient(study) is None:
            return False
        async with self.source.pool.acquire() as conn:
            rows = await store.instances_of(conn, study_uid)
            previous = await store.latest_published_manifest(conn, study_uid)
            if not rows and await rejection.withdraw_study(conn, study):  # IOCM: nothing of the study remains
                return False
        header = study_header(study)
        refs = [ReferencedInstance(r["series_uid"], r["sop_class_uid"], r["sop_instance_uid"]) for r in rows]
        retrieve = RetrieveInfo(self.settings.ae_title, self.settings.repository_unique_id, self.settings.wado_rs_url)
        manifest = await asyncio.to_thread(build_manifest, header, refs, retrieve)
        key = manifest_key(study_uid, manifest.sop_instance_uid)
        try:
            await asyncio.to_thread(self.source.storage.put, key, manifest.encoded)
        except StorageError as exc:
            log.error("study %s: cannot keep its manifest: %s", study_uid, exc)
            return False
        async with self.source.pool.acquire() as conn:
            queued = await store.add_manifest(
                conn, study_uid=study_uid, document_unique_id=manifest.sop_instance_uid,
                entry_uuid=f"urn:uuid:{uuid.uuid4()}", storage_key=key, size=manifest.size, hash=manifest.sha1,
                instance_count=len(refs), replaces_entry_uuid=previous["entry_uuid"] if previous else None,
                snapshot=study["last_received_at"])
        if not queued:  # instances arrived meanwhile: the study is not complete after all
            self.source.storage.delete(key)
            return False
        log.info("study %s: manifest %s over %d instances queued", study_uid, manifest.sop_instance_uid, len(refs))
        metadata_cache.warm_soon(self.source, study_uid)  # so that the first viewer finds it ready
        return True

    async def publish(self, manifest) -> bool:
        """One RAD-68 attempt for a queued manifest; records the outcome."""
        uid = manifest["document_unique_id"]
        try:
            await self._send(manifest)
        except Exception as exc:
            if not isinstance(exc, PublishError | StorageError):
                log.exception("manifest %s: unexpected failure", uid)
                exc = PublishError(f"internal error: {type(exc).__name__}: {exc}")
            if getattr(exc, "permanent", False):
                async with self.source.pool.acquire() as conn:
                    await store.manifest_refused(conn, uid, str(exc), self.settings.retry_max)
                log.error("manifest %s of study %s refused, not retried: %s. Fix the cause, then send new "
                          "instances or run `xds-imaging-source retry %s`", uid, manifest["study_uid"], exc,
                          manifest["study_uid"])
                return False
            delay = self._delay(manifest["attempts"] + 1)
            async with self.source.pool.acquire() as conn:
                await store.manifest_failed(conn, uid, str(exc), delay)
            log.warning("manifest %s of study %s not published (attempt %d, next in %.0fs): %s", uid,
                        manifest["study_uid"], manifest["attempts"] + 1, delay, exc)
            return False
        async with self.source.pool.acquire() as conn:
            await store.manifest_published(conn, uid)
        log.info("manifest %s of study %s published", uid, manifest["study_uid"])
        return True

    async def recheck(self, study) -> bool:
        """A refused study is retried by itself once PIX maps its patient to another affinity-domain id
        (e.g. after a merge or a corrected feed); otherwise it is looked at again after retry-max."""
        local = local_patient(study)
        settings = self.settings
        mapped: str | None = None
        if settings.affinity_domain_oid and settings.pix_port is not None:
            try:
                ids = await pix_query(settings.pix_host, settings.pix_port, local, [settings.affinity_domain_oid])
                found = [i for i in ids if i.authority_oid == settings.affinity_domain_oid]
                if found:
                    mapped = Identifiable(found[0].id, settings.affinity_domain_oid).to_cx()
            except PixQueryError as exc:
                log.info("study %s: PIX re-check failed: %s", study["study_uid"], exc)
        async with self.source.pool.acquire() as conn:
            if mapped and mapped != study["affinity_patient_id"]:
                await store.retry_study(conn, study["study_uid"])
                log.info("study %s: PIX now maps patient %s to %s: publishing again", study["study_uid"],
                         local.to_cx(), mapped)
                return True
            await store.postpone_recheck(conn, study["study_uid"], settings.retry_max)
        return False

    async def _send(self, manifest) -> None:
        from imaging_source.publish import send_manifest

        if not self.settings.repository_url:
            raise PublishError("no repository configured (repository-url): the manifest cannot be published")
        async with self.source.pool.acquire() as conn:
            study = await store.get_study(conn, manifest["study_uid"])
            series = [dict(r) for r in await store.series_of(conn, manifest["study_uid"])]
        kos = await asyncio.to_thread(self.source.storage.read, manifest["storage_key"])
        header = study_header(study)
        package = manifest_submission(
            header, series,
            ManifestDocument(manifest["document_unique_id"], manifest["entry_uuid"], manifest["hash"],
                             manifest["size"], manifest["replaces_entry_uuid"]),
            patient_id=Identifiable.parse_cx(study["affinity_patient_id"]),
            source_patient_id=local_patient(study),
            source_id=self.settings.source_id,
            codes=self.codes,
            accession_issuer_oid=self.settings.accession_issuer_oid,
        )
        await send_manifest(self.soap_client(), self.settings.repository_url, package, kos)
