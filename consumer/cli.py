"""``xds-consumer``: command-line client of the network for integration engineers.

Subcommands (each registers itself in :data:`SUBCOMMANDS`; add new ones the same way):

- ``submit``: ITI-41, send files (PDF, CDA, any MIME type) for a patient, metadata filled in
- ``retrieve``: ITI-43, fetch documents by uniqueId into a folder
- ``find``: ITI-18 FindDocuments, list a patient's documents with what ``retrieve`` needs
- ``remove-metadata`` / ``remove-documents``: ITI-62 at the registry / ITI-86 at a repository

Common settings may come from the environment: ``XDS_CONSUMER_REPOSITORY_URL``,
``XDS_CONSUMER_REPOSITORY_UNIQUE_ID``, ``XDS_CONSUMER_SOURCE_ID``, ``XDS_CONSUMER_REGISTRY_URL``,
``XDS_CONSUMER_AFFINITY_DOMAIN_OID``, ``XDS_CONSUMER_PIX_ADDRESS``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from consumer.client.soap import SoapClient, SoapFaultError, TransportError
from ihe import tls
from ihe.tls import TLS_OPTIONS

Subcommand = Callable[[argparse._SubParsersAction], None]
SUBCOMMANDS: list[Subcommand] = []


def subcommand(register: Subcommand) -> Subcommand:
    SUBCOMMANDS.append(register)
    return register


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"XDS_CONSUMER_{name}", default)


def default_source_id() -> str:
    """A stable OID for this machine as Document Source (2.25 arc from a name-based UUID)."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_DNS, 'xds-consumer.' + socket.gethostname()).int}"


def _print_errors(errors) -> None:
    for e in errors:
        kind = "warning" if not e.is_error else "error"
        print(f"  {kind} {e.code}: {e.context}")


# --- submit -------------------------------------------------------------------------------------


@subcommand
def _register_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="ITI-41: submit files for a patient to a repository",
                       description="Provide and Register Document Set-b: send one or more files as documents of one "
                                   "submission set, with XDS metadata filled in (override any code as "
                                   "code^codingScheme^display name).")
    p.add_argument("files", nargs="+", type=Path, help="documents to submit")
    p.add_argument("--repository", default=_env("REPOSITORY_URL"), help="ITI-41 endpoint of the repository "
                   "[env XDS_CONSUMER_REPOSITORY_URL]")
    p.add_argument("--patient-id", required=True, help="affinity-domain patient id, e.g. 'NHS123^^^&2.16.840.1.113883"
                   ".2.1.4.1&ISO'")
    p.add_argument("--mime-type", help="MIME type of every file (default: guessed from each file name; .xml is "
                   "text/xml for CDA)")
    p.add_argument("--title", help="document title (default: the file name)")
    p.add_argument("--source-id", default=_env("SOURCE_ID"), help="sourceId OID of this Document Source [env "
                   "XDS_CONSUMER_SOURCE_ID; default: an OID derived from this host name]")
    p.add_argument("--class-code", help="classCode (default 18748-4^2.16.840.1.113883.6.1)")
    p.add_argument("--type-code", help="typeCode (default 18782-3^2.16.840.1.113883.6.1)")
    p.add_argument("--format-code", help="formatCode (default: from the MIME type, e.g. urn:ihe:iti:xds-sd:pdf:2008)")
    p.add_argument("--confidentiality-code", help="confidentialityCode (default N^2.16.840.1.113883.5.25)")
    p.add_argument("--facility-type-code", help="healthcareFacilityTypeCode (default 22232009^2.16.840.1.113883.6.96)")
    p.add_argument("--practice-setting-code", help="practiceSettingCode (default 394914008^2.16.840.1.113883.6.96)")
    p.add_argument("--language", default="en-GB", help="languageCode")
    p.add_argument("--author", help="author person (XCN), e.g. '^Smith^John'")
    p.add_argument("--institution", help="author institution (XON), e.g. 'Royal Hospital^^^^^^^^^1.2.3'")
    p.add_argument("--inline", action="store_true", help="send documents inline (base64) instead of MTOM attachments")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the answer")
    p.set_defaults(func=_submit)


def _submit(args: argparse.Namespace) -> int:
    from consumer.client.source import (
        document_entry,
        guess_mime_type,
        parse_code,
        provide_and_register,
        submission_package,
    )

    if not args.repository:
        print("xds-consumer submit: --repository (or XDS_CONSUMER_REPOSITORY_URL) is required", file=sys.stderr)
        return 2
    for f in args.files:
        if not f.is_file():
            print(f"xds-consumer submit: {f} is not a file", file=sys.stderr)
            return 2
    codes = {}
    for name in ("class_code", "type_code", "format_code", "confidentiality_code", "facility_type_code",
                 "practice_setting_code"):
        value = getattr(args, name)
        if value:
            try:
                codes[name] = parse_code(value)
            except ValueError as exc:
                print(f"xds-consumer submit: --{name.replace('_', '-')}: {exc}", file=sys.stderr)
                return 2
    entries, contents = [], {}
    for f in args.files:
        kwargs = {k: codes[k] for k in ("class_code", "type_code", "format_code", "practice_setting_code")
                  if k in codes}
        if "facility_type_code" in codes:
            kwargs["healthcare_facility_type_code"] = codes["facility_type_code"]
        if "confidentiality_code" in codes:
            kwargs["confidentiality_codes"] = [codes["confidentiality_code"]]
        entry = document_entry(args.patient_id, args.mime_type or guess_mime_type(f), title=args.title or f.name,
                               language_code=args.language, author_person=args.author,
                               author_institution=args.institution, **kwargs)
        entries.append(entry)
        contents[entry.entry_uuid] = f
    package = submission_package(args.patient_id, entries, source_id=args.source_id or default_source_id(),
                                 author_person=args.author, author_institution=args.institution)

    async def run():
        async with SoapClient(timeout=args.timeout) as client:
            return await provide_and_register(client, args.repository, package, contents, mtom=not args.inline)

    try:
        result = asyncio.run(run())
    except (TransportError, SoapFaultError) as exc:
        print(f"xds-consumer submit: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or folder of ours (unreadable, not writable, disk full)
        print(f"xds-consumer submit: {exc}", file=sys.stderr)
        return 1
    print(f"status: {result.status.rsplit(':', 1)[-1]}")
    print(f"submission set uniqueId: {package.submission_set.unique_id}")
    for entry, f in zip(entries, args.files, strict=True):
        print(f"document {f}: uniqueId {entry.unique_id} entryUUID {entry.entry_uuid} mimeType {entry.mime_type} "
              f"size {entry.size} hash {entry.hash}")
    _print_errors(result.errors)
    return 0 if result.ok else 1


# --- retrieve -----------------------------------------------------------------------------------


@subcommand
def _register_retrieve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrieve", help="ITI-43: retrieve documents by uniqueId",
                       description="Retrieve Document Set: fetch documents from a repository and write each to "
                                   "<output-dir>/<document uniqueId>.")
    p.add_argument("document_ids", nargs="+", help="document uniqueIds")
    p.add_argument("--repository", default=_env("REPOSITORY_URL"), help="ITI-43 endpoint of the repository "
                   "[env XDS_CONSUMER_REPOSITORY_URL]")
    p.add_argument("--repository-id", default=_env("REPOSITORY_UNIQUE_ID"), help="repositoryUniqueId the documents "
                   "are in (from the DocumentEntry) [env XDS_CONSUMER_REPOSITORY_UNIQUE_ID]")
    p.add_argument("--home-community-id", help="homeCommunityId (urn:oid:...) when retrieving across communities")
    p.add_argument("--output-dir", type=Path, default=Path("."), help="folder to write the documents to")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for data")
    p.set_defaults(func=_retrieve)


def _retrieve(args: argparse.Namespace) -> int:
    from consumer.client.retrieve import DocumentRequest, retrieve_document_set

    if not args.repository or not args.repository_id:
        print("xds-consumer retrieve: --repository and --repository-id are required", file=sys.stderr)
        return 2
    requests = [DocumentRequest(args.repository_id, d, args.home_community_id) for d in args.document_ids]

    async def run():
        async with SoapClient(timeout=args.timeout) as client:
            return await retrieve_document_set(client, args.repository, requests, dest_dir=args.output_dir)

    try:
        result = asyncio.run(run())
    except (TransportError, SoapFaultError) as exc:
        print(f"xds-consumer retrieve: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or folder of ours (unreadable, not writable, disk full)
        print(f"xds-consumer retrieve: {exc}", file=sys.stderr)
        return 1
    print(f"status: {result.status.rsplit(':', 1)[-1]}")
    for d in result.documents:
        print(f"document {d.document_unique_id}: {d.path} mimeType {d.mime_type} size {d.size} sha1 {d.sha1}")
    _print_errors(result.errors)
    return 0 if result.ok else 1


# --- find ---------------------------------------------------------------------------------------


@subcommand
def _register_find(sub: argparse._SubParsersAction) -> None:
    from ihe.nhs import NHS_NUMBER_OID

    p = sub.add_parser("find", help="ITI-18: list a patient's documents",
                       description="Registry Stored Query FindDocuments: one line per DocumentEntry with its "
                                   "uniqueId, repositoryUniqueId, mimeType, creation time, class and title. A "
                                   "hospital number (any id outside the affinity domain) is first resolved to the "
                                   "affinity domain id by a PIX Query (ITI-9) at the registry.")
    p.add_argument("--registry", default=_env("REGISTRY_URL"), help="ITI-18 endpoint of the registry "
                   "[env XDS_CONSUMER_REGISTRY_URL]")
    p.add_argument("--patient-id", required=True, help="affinity-domain patient id, e.g. "
                   "'9434765919^^^&2.16.840.1.113883.2.1.4.1&ISO', or a hospital number with its assigning "
                   "authority, e.g. 'A100^^^&1.2.826.0.1.999.1&ISO'")
    p.add_argument("--affinity-domain-oid", default=_env("AFFINITY_DOMAIN_OID", NHS_NUMBER_OID),
                   help="assigning authority of XDS patient ids [env XDS_CONSUMER_AFFINITY_DOMAIN_OID; default the "
                        "NHS number OID %(default)s]")
    p.add_argument("--pix-address", default=_env("PIX_ADDRESS"), metavar="HOST:PORT",
                   help="the registry's MLLP listener for PIX Query (ITI-9) [env XDS_CONSUMER_PIX_ADDRESS; default "
                        "the host of --registry, port 2575]")
    p.add_argument("--all", action="store_true", help="include deprecated (replaced) documents")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    p.set_defaults(func=_find)


def _find(args: argparse.Namespace) -> int:
    from consumer.client.patient import (
        PatientIdUnresolved,
        default_mllp_address,
        parse_address,
        resolve_patient_id,
    )
    from consumer.client.query import APPROVED, QueryFailed, find_documents

    if not args.registry:
        print("xds-consumer find: --registry is required", file=sys.stderr)
        return 2
    try:
        mllp = parse_address(args.pix_address) if args.pix_address else default_mllp_address(args.registry)
    except ValueError as exc:
        print(f"xds-consumer find: --pix-address / --registry: {exc}", file=sys.stderr)
        return 2
    statuses = (APPROVED, "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated") if args.all else (APPROVED,)

    try:
        patient = asyncio.run(resolve_patient_id(args.patient_id, args.affinity_domain_oid, mllp,
                                                 timeout=min(args.timeout, 30.0)))
    except PatientIdUnresolved as exc:
        print(f"xds-consumer find: {exc}", file=sys.stderr)
        return 1
    if patient.note:
        print(f"patient id: {patient.note}")

    async def run():
        async with SoapClient(timeout=args.timeout) as client:
            return await find_documents(client, args.registry, patient.cx, statuses)

    try:
        entries = asyncio.run(run())
    except QueryFailed as exc:
        print("status: Failure")
        _print_errors(exc.errors)
        return 1
    except (TransportError, SoapFaultError) as exc:
        print(f"xds-consumer find: {exc}", file=sys.stderr)
        return 1
    print(f"{len(entries)} document(s)")
    for e in sorted(entries, key=lambda e: e.creation_time or "", reverse=True):
        status = (e.status or "").rsplit(":", 1)[-1]
        title = e.title.value if e.title else ""
        klass = e.class_code.display_name.value if e.class_code and e.class_code.display_name else ""
        print(f"{e.unique_id}  repository {e.repository_unique_id}  {e.mime_type}  {e.creation_time or '-'}  "
              f"{status}  {klass}  {title}")
    return 0


# --- remove-metadata / remove-documents ---------------------------------------------------------


@subcommand
def _register_remove_metadata(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("remove-metadata", help="ITI-62: remove registry objects (documents' metadata)",
                       description="Delete Document Set (Remove Metadata): remove DocumentEntries, SubmissionSets, "
                                   "Folders and Associations from the registry, all or nothing. With --document the "
                                   "DocumentEntries of those uniqueIds are removed together with every Association "
                                   "referencing them (found by ITI-18). The content stays in the repository: see "
                                   "remove-documents.")
    p.add_argument("entry_uuids", nargs="*", help="entryUUIDs (urn:uuid:...) of objects to remove")
    p.add_argument("--document", action="append", default=[], metavar="UNIQUEID",
                   help="uniqueId of a document whose entry and associations to remove (repeatable)")
    p.add_argument("--registry", default=_env("REGISTRY_URL"), help="ITI-62/ITI-18 endpoint of the registry "
                   "[env XDS_CONSUMER_REGISTRY_URL]")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer")
    p.set_defaults(func=_remove_metadata)


def _remove_metadata(args: argparse.Namespace) -> int:
    from consumer.client.query import QueryFailed
    from consumer.client.remove import document_removal_set, remove_metadata

    if not args.registry:
        print("xds-consumer remove-metadata: --registry (or XDS_CONSUMER_REGISTRY_URL) is required", file=sys.stderr)
        return 2
    if not args.entry_uuids and not args.document:
        print("xds-consumer remove-metadata: name entryUUIDs or --document uniqueIds to remove", file=sys.stderr)
        return 2

    async def run():
        async with SoapClient(timeout=args.timeout) as client:
            ids, missing = list(args.entry_uuids), []
            if args.document:
                found, missing = await document_removal_set(client, args.registry, args.document)
                ids += [i for i in found if i not in ids]
            if missing or args.dry_run:
                return ids, missing, None
            return ids, missing, await remove_metadata(client, args.registry, ids)

    try:
        ids, missing, result = asyncio.run(run())
    except QueryFailed as exc:
        print("status: Failure")
        _print_errors(exc.errors)
        return 1
    except (TransportError, SoapFaultError) as exc:
        print(f"xds-consumer remove-metadata: {exc}", file=sys.stderr)
        return 1
    if missing:
        print(f"xds-consumer remove-metadata: the registry holds no document {', '.join(missing)}; nothing removed",
              file=sys.stderr)
        return 1
    if result is None:
        print("would remove:")
        for i in ids:
            print(f"  {i}")
        return 0
    print(f"status: {result.status.rsplit(':', 1)[-1]}")
    if result.ok:
        for i in ids:
            print(f"removed {i}")
    _print_errors(result.errors)
    return 0 if result.ok else 1


@subcommand
def _register_remove_documents(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("remove-documents", help="ITI-86: delete documents' content at a repository",
                       description="Remove Documents: ask a repository to delete the content of documents by "
                                   "uniqueId. Their metadata stays in the registry: see remove-metadata.")
    p.add_argument("document_ids", nargs="+", help="document uniqueIds")
    p.add_argument("--repository", default=_env("REPOSITORY_URL"), help="ITI-86 endpoint of the repository "
                   "[env XDS_CONSUMER_REPOSITORY_URL]")
    p.add_argument("--repository-id", default=_env("REPOSITORY_UNIQUE_ID"), help="repositoryUniqueId the documents "
                   "are in [env XDS_CONSUMER_REPOSITORY_UNIQUE_ID]")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    p.set_defaults(func=_remove_documents)


def _remove_documents(args: argparse.Namespace) -> int:
    from consumer.client.remove import remove_documents
    from consumer.client.retrieve import DocumentRequest

    if not args.repository or not args.repository_id:
        print("xds-consumer remove-documents: --repository and --repository-id are required", file=sys.stderr)
        return 2
    requests = [DocumentRequest(args.repository_id, d) for d in args.document_ids]

    async def run():
        async with SoapClient(timeout=args.timeout) as client:
            return await remove_documents(client, args.repository, requests)

    try:
        result = asyncio.run(run())
    except (TransportError, SoapFaultError) as exc:
        print(f"xds-consumer remove-documents: {exc}", file=sys.stderr)
        return 1
    print(f"status: {result.status.rsplit(':', 1)[-1]}")
    failed = {e.location for e in result.errors if e.is_error}
    for d in args.document_ids:
        if d not in failed and args.repository_id not in failed:
            print(f"removed {d}")
    _print_errors(result.errors)
    return 0 if result.ok else 1


# --- main ---------------------------------------------------------------------------------------

from consumer.browse_cli import SUBCOMMANDS as _BROWSE  # noqa: E402 - patients, show-study, retrieve-images

SUBCOMMANDS.extend(_BROWSE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xds-consumer",
        description="Command-line client of the XDS network: submit documents (ITI-41), find a patient's "
                    "documents (ITI-18), retrieve them (ITI-43), remove them (ITI-62, ITI-86). Run "
                    "'xds-consumer COMMAND --help' for each command.",
        epilog="Environment: XDS_CONSUMER_REPOSITORY_URL, XDS_CONSUMER_REPOSITORY_UNIQUE_ID, XDS_CONSUMER_SOURCE_ID, "
               "XDS_CONSUMER_REGISTRY_URL, XDS_CONSUMER_AFFINITY_DOMAIN_OID, XDS_CONSUMER_PIX_ADDRESS, "
               "XDS_CONSUMER_TLS_CERT, XDS_CONSUMER_TLS_KEY, XDS_CONSUMER_TLS_CA, XDS_CONSUMER_TLS_PIN.")
    for opt in TLS_OPTIONS:  # before the command: e.g. xds-consumer --tls-cert node.crt ... find ...
        parser.add_argument(f"--{opt.name}", dest=opt.dest, default=_env(opt.dest.upper()), help=opt.help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if problem := tls.startup_problem(args):  # https:// endpoints, MLLP and DICOM over mutual TLS
        print(f"xds-consumer: {problem}", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
