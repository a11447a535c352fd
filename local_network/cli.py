"""``xds-local``: start the network's services on this machine, each as its own process.

With no database URL it starts one embedded PostgreSQL (data under ``--data-dir``) that
all services share, as a small deployment would share one database server.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ihe.database import resolve_database_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xds-local", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("XDS_DATABASE_URL"),
                        help="PostgreSQL URL; when absent an embedded PostgreSQL is started [env XDS_DATABASE_URL]")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="folder for all local data")
    parser.add_argument("--host", default="127.0.0.1", help="address the services listen on")
    parser.add_argument("--registry-port", type=int, default=8010)
    parser.add_argument("--mllp-port", type=int, default=2575)
    args = parser.parse_args(argv)

    database_url, embedded = resolve_database_url(args.database_url, args.data_dir)
    print(f"database: {database_url}", flush=True)
    services = [
        [sys.executable, "-m", "registry.cli", "--host", args.host, "--port", str(args.registry_port),
         "--mllp-host", args.host, "--mllp-port", str(args.mllp_port), "--database-url", database_url],
    ]
    procs = [subprocess.Popen(cmd) for cmd in services]
    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop:
            for p in procs:
                if p.poll() is not None:
                    print(f"xds-local: {p.args[2]} exited with {p.returncode}; stopping", file=sys.stderr)
                    stop = True
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        del embedded
    return 0


if __name__ == "__main__":
    sys.exit(main())
