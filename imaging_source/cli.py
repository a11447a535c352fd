"""``xds-imaging-source``: the XDS-I.b Imaging Document Source.

    xds-imaging-source [serve]        run the Storage SCP, RAD-69, WADO-URI/RS, publication
    xds-imaging-source import FOLDER  store and index every DICOM file under FOLDER
    xds-imaging-source status [--all] list studies not (yet) transferred: state, attempts, last error
    xds-imaging-source retry STUDY_UID publish a refused study again once its cause is fixed
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from ihe import tls
from ihe.config import build_parser, resolve
from ihe.database import resolve_database_url
from ihe.xua.policy import policy_problem
from imaging_source.settings import OPTIONS, ImagingSourceSettings

COMMANDS = ("serve", "import", "status", "retry")


def _parser():
    parser = build_parser("imaging-source", "IHE XDS-I.b Imaging Document Source (DICOM in, RAD-68, RAD-69, "
                          "WADO-URI, WADO-RS)", OPTIONS)
    parser.add_argument("command", nargs="?", default="serve", choices=COMMANDS,
                        help="serve (default), import FOLDER..., status, or retry STUDY_UID...")
    parser.add_argument("paths", nargs="*", help="folders for import, Study Instance UIDs for retry")
    parser.add_argument("--all", action="store_true", help="status: list published studies too")
    return parser


async def _import(settings: ImagingSourceSettings, database_url: str, folders: list[Path]) -> int:
    from imaging_source.app import open_source
    from imaging_source.import_folder import import_folder

    source = await open_source(settings, database_url)
    failed = 0
    try:
        for folder in folders:
            report = await import_folder(folder, source.storage, source.pool,
                                         issuer_oid=settings.patient_id_issuer_oid,
                                         issuer_ns=settings.patient_id_issuer_namespace)
            print(f"{folder}: {report.stored} instances stored ({report.new} new) in {len(report.studies)} studies, "
                  f"{len(report.rejected)} files refused")
            for path, reason in report.rejected:
                print(f"  refused {path}: {reason}")
            failed += len(report.rejected)
    finally:
        await source.pool.close()
    return 1 if failed else 0


async def _status(settings: ImagingSourceSettings, database_url: str, everything: bool) -> int:
    from imaging_source.app import open_source
    from imaging_source.store import publication_status

    source = await open_source(settings, database_url)
    try:
        async with source.pool.acquire() as conn:
            rows = await publication_status(conn, problems_only=not everything)
    finally:
        await source.pool.close()
    if not rows:
        print("every received study is published")
        return 0
    print(f"{'study':<64} {'state':<16} {'inst':>5} {'tries':>5}  last error")
    for r in rows:
        state = "NEEDS ACTION" if r["needs_action"] else r["state"]
        print(f"{r['study_uid']:<64} {state:<16} {r['instances']:>5} {r['attempts']:>5}  {r['last_error'] or ''}")
    refused = sum(1 for r in rows if r["needs_action"])
    if refused:
        print(f"{refused} studies were refused and are not retried: fix the cause, then send new instances or run "
              "`xds-imaging-source retry STUDY_UID`")
    return 0


async def _retry(settings: ImagingSourceSettings, database_url: str, study_uids: list[str]) -> int:
    from imaging_source.app import open_source
    from imaging_source.store import retry_study

    source = await open_source(settings, database_url)
    unknown = 0
    try:
        async with source.pool.acquire() as conn:
            for uid in study_uids:
                if await retry_study(conn, uid):
                    print(f"{uid}: will be published again")
                else:
                    print(f"{uid}: unknown, or not refused nor waiting: nothing to retry", file=sys.stderr)
                    unknown += 1
    finally:
        await source.pool.close()
    return 1 if unknown else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = ImagingSourceSettings.from_dict(resolve("imaging-source", OPTIONS, args))
    if problem := policy_problem(settings.xua, settings.xua_trust) or tls.startup_problem(settings):
        print(f"xds-imaging-source: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.command in ("import", "retry") and not args.paths:
        print(f"xds-imaging-source {args.command}: name at least one "
              f"{'folder' if args.command == 'import' else 'Study Instance UID'}", file=sys.stderr)
        return 2
    database_url, embedded = resolve_database_url(settings.database_url, settings.data_dir)
    try:
        if args.command == "import":
            return asyncio.run(_import(settings, database_url, [Path(p) for p in args.paths]))
        if args.command == "retry":
            return asyncio.run(_retry(settings, database_url, args.paths))
        if args.command == "status":
            return asyncio.run(_status(settings, database_url, args.all))
        from ihe.eventloop import run
        from imaging_source.app import serve

        with contextlib.suppress(KeyboardInterrupt):
            run(serve(settings, database_url))
        return 0
    finally:
        del embedded  # the embedded server stops when its last user goes


if __name__ == "__main__":
    sys.exit(main())
