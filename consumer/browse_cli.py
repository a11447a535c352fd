"""``xds-consumer`` commands for integration engineers browsing the network: ``patients`` (PDQ ITI-21),
``show-study`` (the study's manifest by ITI-18 + ITI-43, with WADO and viewer links) and
``retrieve-images`` (RAD-69). Every failure is one line on stderr and exit status 1."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

from consumer.client.soap import SoapClient, SoapFaultError, TransportError

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []  # added to consumer.cli's


def subcommand(register):
    SUBCOMMANDS.append(register)
    return register


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"XDS_CONSUMER_{name}", default)


class CommandError(Exception):
    """A failure to report in one line."""


def _fail(command: str, message: str) -> int:
    print(f"xds-consumer {command}: {message}", file=sys.stderr)
    return 1


def _mllp(args: argparse.Namespace) -> tuple[str, int]:
    from consumer.client.patient import default_mllp_address, parse_address

    if args.pix_address:
        return parse_address(args.pix_address)
    if args.registry:
        return default_mllp_address(args.registry)
    raise ValueError("--pix-address (or --registry, whose host and port 2575 are then used) is required")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", default=_env("REGISTRY_URL"), help="ITI-18 endpoint of the registry "
                   "[env XDS_CONSUMER_REGISTRY_URL]")
    p.add_argument("--pix-address", default=_env("PIX_ADDRESS"), metavar="HOST:PORT",
                   help="the registry's MLLP listener (PIX ITI-9, PDQ ITI-21) [env XDS_CONSUMER_PIX_ADDRESS; "
                        "default the host of --registry, port 2575]")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer")


# --- patients -----------------------------------------------------------------------------------


@subcommand
def _register_patients(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patients", help="ITI-21: find patients by demographics, with all their ids",
                       description="Patient Demographics Query at the registry's MLLP port: one line per patient "
                                   "with every cross-referenced identifier (id^^^&OID&ISO), name, birth date and sex. "
                                   "Names may end in '*' (prefix); '--family \"*\"' lists everyone (at most "
                                   "--limit patients).")
    _common(p)
    p.add_argument("--family", help="family name (case-insensitive, '*' wildcard)")
    p.add_argument("--given", help="given name (case-insensitive, '*' wildcard)")
    p.add_argument("--birth-date", help="birth date YYYYMMDD or YYYY-MM-DD")
    p.add_argument("--identifier", help="an identifier of the patient as id^^^&OID&ISO (or id^^^namespace)")
    p.add_argument("--limit", type=int, default=100, help="at most this many patients (the registry's cap is 100)")
    p.set_defaults(func=_patients)


def _parse_identifier(text: str):
    from ihe.metadata.model import Identifiable

    ident, _, rest = text.partition("^^^")
    if not ident:
        raise ValueError(f"{text!r} is not id^^^&OID&ISO")
    if not rest:
        return Identifiable(ident)
    namespace, _, tail = rest.partition("&")
    oid = tail.split("&")[0] if tail else None
    return Identifiable(ident, oid or None, namespace or None)


def format_identifier(i) -> str:
    if i.authority_oid:
        return f"{i.id}^^^{i.authority_namespace or ''}&{i.authority_oid}&ISO"
    return f"{i.id}^^^{i.authority_namespace or ''}"


def _patients(args: argparse.Namespace) -> int:
    from ihe.pdq import PdqQueryError, pdq_query

    try:
        host, port = _mllp(args)
        identifier = _parse_identifier(args.identifier) if args.identifier else None
    except ValueError as exc:
        return _fail("patients", str(exc))
    birth_date = args.birth_date.replace("-", "") if args.birth_date else None
    if not any((args.family, args.given, birth_date, identifier)):
        return _fail("patients", "give at least one of --family, --given, --birth-date, --identifier")
    try:
        found = asyncio.run(pdq_query(host, port, family=args.family, given=args.given, birth_date=birth_date,
                                      identifier=identifier, limit=args.limit, timeout=args.timeout,
                                      sending_application="XDS-CONSUMER"))
    except (PdqQueryError, ValueError) as exc:
        return _fail("patients", str(exc))
    print(f"{len(found)} patient(s)")
    for patient in found:
        name = ", ".join(p for p in (patient.family, patient.given) if p) or "-"
        ids = "  ".join(format_identifier(i) for i in patient.identifiers)
        print(f"{name}  born {patient.birth_date or '-'}  sex {patient.sex or '-'}  ids {ids}")
    return 0


# --- show-study / retrieve-images --------------------------------------------------------------


def _register_study(p: argparse.ArgumentParser) -> None:
    from ihe.nhs import NHS_NUMBER_OID

    p.add_argument("study_uid", metavar="STUDY_UID", help="StudyInstanceUID")
    _common(p)
    p.add_argument("--patient-id", required=True, help="affinity-domain patient id (id^^^&OID&ISO) or a hospital "
                   "number with its authority, resolved by PIX (ITI-9)")
    p.add_argument("--affinity-domain-oid", default=_env("AFFINITY_DOMAIN_OID", NHS_NUMBER_OID),
                   help="assigning authority of XDS patient ids [env XDS_CONSUMER_AFFINITY_DOMAIN_OID]")
    p.add_argument("--repository", action="append", default=[], metavar="UNIQUE_ID=URL",
                   help="ITI-43 endpoint of the repository holding the manifest, by its repositoryUniqueId "
                        "(repeatable)")


async def _find_manifest(args: argparse.Namespace, client: SoapClient):
    """(DocumentEntry, StudyManifest) of the study's KOS manifest: ITI-18 by reference id, then ITI-43."""
    from consumer.client.browse import find_study_manifests
    from consumer.client.imaging import ManifestError, read_study_manifest
    from consumer.client.patient import PatientIdUnresolved, resolve_patient_id
    from consumer.client.query import QueryFailed
    from consumer.client.retrieve import DocumentRequest, retrieve_document_set

    if not args.registry:
        raise CommandError("--registry is required")
    try:
        patient = await resolve_patient_id(args.patient_id, args.affinity_domain_oid, _mllp(args),
                                           timeout=min(args.timeout, 30.0))
        entries = await find_study_manifests(client, args.registry, patient.cx, args.study_uid)
    except (PatientIdUnresolved, ValueError) as exc:
        raise CommandError(str(exc)) from None
    except QueryFailed as exc:
        raise CommandError(f"the registry refused the query: {exc}") from None
    if not entries:
        raise CommandError(f"no manifest of study {args.study_uid} for patient {patient.cx} in the registry")
    entry = sorted(entries, key=lambda e: e.creation_time or "")[-1]
    repositories = dict(r.split("=", 1) for r in args.repository if "=" in r)
    url = repositories.get(entry.repository_unique_id or "")
    if url is None:
        raise CommandError(f"the manifest is in repository {entry.repository_unique_id}: give its ITI-43 endpoint "
                           f"as --repository {entry.repository_unique_id}=URL")
    result = await retrieve_document_set(client, url, [DocumentRequest(entry.repository_unique_id, entry.unique_id)])
    doc = next((d for d in result.documents if d.document_unique_id == entry.unique_id and d.data), None)
    if doc is None:
        reason = "; ".join(e.context or e.code for e in result.errors) or "no document in the answer"
        raise CommandError(f"repository {entry.repository_unique_id} did not return manifest {entry.unique_id}: "
                           f"{reason}")
    try:
        return entry, read_study_manifest(doc.data)
    except ManifestError as exc:
        raise CommandError(str(exc)) from None


def _run(command: str, body: Callable[[SoapClient], Awaitable[int]], timeout: float) -> int:
    """Run ``body`` with a SOAP client; every failure becomes one line on stderr and exit status 1."""

    async def run():
        async with SoapClient(timeout=timeout) as client:
            return await body(client)

    from consumer.client.imaging import ManifestError

    try:
        return asyncio.run(run())
    except (CommandError, ManifestError) as exc:
        return _fail(command, str(exc))
    except (TransportError, SoapFaultError) as exc:
        return _fail(command, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except OSError as exc:
        return _fail(command, str(exc))


@subcommand
def _register_show_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show-study", help="ITI-18 + ITI-43: a study's manifest with ready WADO and viewer links",
                       description="Finds the study's KOS manifest (FindDocumentsByReferenceId on the study UID), "
                                   "retrieves it (ITI-43) and prints each series and instance with its WADO-RS "
                                   "(RAD-107) and WADO-URI (RAD-55) links, and the portal's viewer link.")
    _register_study(p)
    p.add_argument("--portal", help="the portal's base URL, for the viewer link")
    p.set_defaults(func=_show_study)


def _show_study(args: argparse.Namespace) -> int:
    from consumer.client.imaging import wado_rs_link, wado_uri_link

    async def show(client: SoapClient) -> int:
        entry, manifest = await _find_manifest(args, client)
        print(f"study {manifest.study_uid}: manifest {entry.unique_id} in repository {entry.repository_unique_id}; "
              f"{len(manifest.series)} series, {manifest.instance_count} instance(s)")
        if args.portal:
            print(f"viewer: {args.portal.rstrip('/')}/viewer/viewer?StudyInstanceUIDs={quote(manifest.study_uid)}")
        for series in manifest.series:
            print(f"series {series.series_uid}: {len(series.instances)} instance(s) at {series.retrieve_url or '-'} "
                  f"(location {series.location_uid or '-'}, AE {series.ae_title or '-'})")
            for inst in series.instances:
                print(f"  instance {inst.sop_instance_uid} (SOP class {inst.sop_class_uid})")
                if series.retrieve_url:
                    print(f"    WADO-RS:  {wado_rs_link(series.retrieve_url, manifest.study_uid, series.series_uid, inst.sop_instance_uid)}")  # noqa: E501
                    print(f"    WADO-URI: {wado_uri_link(series.retrieve_url, manifest.study_uid, series.series_uid, inst.sop_instance_uid)}")  # noqa: E501
        return 0

    return _run("show-study", show, args.timeout)


@subcommand
def _register_retrieve_images(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrieve-images", help="RAD-69: fetch a study's images from the imaging source",
                       description="Finds the study's manifest like show-study, then retrieves every instance it "
                                   "references by RAD-69 from the imaging source the manifest names (Retrieve "
                                   "Location UID; the source's /rad69 beside its Retrieve URL) and writes "
                                   "<out>/<series uid>/<SOP instance uid>.dcm.")
    _register_study(p)
    p.add_argument("--out", type=Path, required=True, help="folder to write the DICOM files to")
    p.add_argument("--rad69-url", help="the imaging source's RAD-69 endpoint (default: from the manifest)")
    p.set_defaults(func=_retrieve_images)


def _retrieve_images(args: argparse.Namespace) -> int:
    from consumer.client.imaging import InstanceRequest, rad69_url, retrieve_imaging_document_set

    async def fetch(client: SoapClient) -> int:
        _entry, manifest = await _find_manifest(args, client)
        by_url: dict[str, list[InstanceRequest]] = {}
        for series in manifest.series:
            if not series.location_uid or not (series.retrieve_url or args.rad69_url):
                raise CommandError(f"the manifest does not say where series {series.series_uid} is (no Retrieve "
                                   "Location UID / Retrieve URL)")
            url = args.rad69_url or rad69_url(series.retrieve_url)
            by_url.setdefault(url, []).extend(InstanceRequest(manifest.study_uid, series.series_uid,
                                                              i.sop_instance_uid, series.location_uid)
                                              for i in series.instances)
        series_of = {i.sop_instance_uid: s.series_uid for s in manifest.series for i in s.instances}
        written = 0
        missing: list[str] = []
        for url, requests in by_url.items():
            result = await retrieve_imaging_document_set(client, url, requests)
            for req in requests:
                data = result.instances.get(req.sop_instance_uid)
                if data is None:
                    missing.append(req.sop_instance_uid)
                    continue
                folder = args.out / series_of[req.sop_instance_uid]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{req.sop_instance_uid}.dcm").write_bytes(data)
                written += 1
            if missing:
                reason = "; ".join(e.context or e.code for e in result.errors) or "not in the answer"
                raise CommandError(f"{url} did not return {len(missing)} of {len(requests)} instance(s) "
                                   f"({written} written to {args.out}): {reason}")
        print(f"{written} instance(s) of study {manifest.study_uid} written to {args.out}")
        return 0

    return _run("retrieve-images", fetch, args.timeout)
