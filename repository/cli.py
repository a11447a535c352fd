"""``xds-repository``: start one XDS.b Document Repository (one per hospital)."""

from __future__ import annotations

import asyncio
import logging
import sys

from ihe import tls
from ihe.config import build_parser, resolve
from ihe.database import resolve_database_url
from repository.settings import OPTIONS, RepositorySettings


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        "repository",
        "IHE XDS.b Document Repository: ITI-41 Provide and Register Document Set-b (MTOM/XOP or inline) and "
        "ITI-43 Retrieve Document Set. Run one per hospital, each with its own --repository-unique-id, "
        "--storage-dir and --port.",
        OPTIONS,
    )
    args = parser.parse_args(argv)
    settings = RepositorySettings.from_dict(resolve("repository", OPTIONS, args))
    problems = settings.problems()
    if not problems and (problem := tls.startup_problem(settings)):
        problems = [problem]
    if problems:
        for p in problems:
            print(f"xds-repository: {p}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    database_url, embedded = resolve_database_url(settings.database_url, settings.data_dir)
    from repository.app import RepositoryInUse, serve
    from repository.storage import StorageLocked

    try:
        asyncio.run(serve(settings, database_url))
    except KeyboardInterrupt:
        pass
    except (RepositoryInUse, StorageLocked) as exc:
        print(f"xds-repository: {exc}", file=sys.stderr)
        return 3
    finally:
        del embedded  # the embedded server stops when its last user goes
    return 0


if __name__ == "__main__":
    sys.exit(main())
