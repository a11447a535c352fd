"""``xds-registry``: start the XDS.b Document Registry."""

from __future__ import annotations

import asyncio
import logging
import sys

from ihe.config import build_parser, resolve
from ihe.database import resolve_database_url
from registry.settings import OPTIONS, RegistrySettings


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("registry", "IHE XDS.b Document Registry (ITI-42, ITI-18, ITI-8, ITI-9)", OPTIONS)
    args = parser.parse_args(argv)
    settings = RegistrySettings.from_dict(resolve("registry", OPTIONS, args))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    database_url, embedded = resolve_database_url(settings.database_url, settings.data_dir)
    from registry.app import serve

    try:
        asyncio.run(serve(settings, database_url))
    except KeyboardInterrupt:
        pass
    finally:
        del embedded  # the embedded server stops when its last user goes
    return 0


if __name__ == "__main__":
    sys.exit(main())
