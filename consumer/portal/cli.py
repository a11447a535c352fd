"""``xds-portal``: the clinicians' portal (sign-in, patient search, one list of everything, reports)."""

from __future__ import annotations

import contextlib
import logging
import sys

from consumer.portal.settings import OPTIONS, PortalSettings
from ihe import tls
from ihe.config import build_parser, resolve
from ihe.database import resolve_database_url
from ihe.eventloop import run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("portal", "Clinicians' portal of the regional XDS network: OpenID Connect sign-in, "
                          "patient search (NHS number, hospital number by PIX, name and birth date by PDQ), one list "
                          "of every document (ITI-18) and report viewing (ITI-43)", OPTIONS)
    args = parser.parse_args(argv)
    try:
        settings = PortalSettings.from_dict(resolve("portal", OPTIONS, args))
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.registries:
        parser.error("name at least one registry (--registries NAME|URL)")
    from consumer.portal.xua import xua_problem

    if problem := xua_problem(settings):
        parser.error(problem)
    if problem := tls.startup_problem(settings):
        print(f"xds-portal: {problem}", file=sys.stderr)
        return 2
    database_url, embedded = resolve_database_url(settings.database_url, settings.data_dir)
    try:
        from consumer.portal.app import serve

        with contextlib.suppress(KeyboardInterrupt):
            run(serve(settings, database_url))
        return 0
    finally:
        del embedded  # the embedded server stops when its last user goes


if __name__ == "__main__":
    sys.exit(main())
