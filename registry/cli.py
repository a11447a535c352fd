"""``xds-registry``: start the XDS.b Document Registry."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import sys

from ihe import tls
from ihe.config import build_parser, resolve
from ihe.database import resolve_database_url
from ihe.eventloop import run
from ihe.xua.policy import policy_problem
from registry.settings import OPTIONS, RegistrySettings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "policy":  # the access policy's administrator commands
        from registry.policy_cli import main as policy_main

        return policy_main(argv[1:])
    parser = build_parser("registry", "IHE XDS.b Document Registry (ITI-42, ITI-18, ITI-8, ITI-9)", OPTIONS)
    args = parser.parse_args(argv)
    settings = RegistrySettings.from_dict(resolve("registry", OPTIONS, args))
    if problem := policy_problem(settings.xua, settings.xua_trust) or tls.startup_problem(settings):
        print(f"xds-registry: {problem}", file=sys.stderr)
        return 2
    if settings.access_policy is not None:
        from ihe.policy.config import PolicyConfigError, load_policy_file

        try:
            load_policy_file(settings.access_policy)
        except PolicyConfigError as exc:
            print(f"xds-registry: {exc}", file=sys.stderr)
            return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    database_url, embedded = resolve_database_url(settings.database_url, settings.data_dir)
    # Extra worker processes share the HTTP port; the first process also runs the MLLP listener.
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_serve, args=(settings, database_url, False), daemon=True)
               for _ in range(max(0, settings.workers - 1))]
    for w in workers:
        w.start()
    try:
        _serve(settings, database_url, True)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.join(10)
        del embedded  # the embedded server stops when its last user goes
    return 0


def _serve(settings: RegistrySettings, database_url: str, with_mllp: bool) -> None:
    from registry.app import serve

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tls.configure(settings)  # again in a spawned worker (checked by main already)
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(settings, database_url, with_mllp=with_mllp))


if __name__ == "__main__":
    sys.exit(main())
