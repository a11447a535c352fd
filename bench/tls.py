"""Cost of mutual TLS on the registry: ITI-18 FindDocuments latency, plain HTTP vs HTTPS with client certificates.

    python -m bench.tls [--database-url URL] [--queries 500]

One ``xds-registry`` process on loopback, started twice on the same database (plain, then with a
certificate from a throw-away CA); the query is for a patient without documents, so that what differs
is the transport (the query itself: ``python -m bench.registry``). Measured per mode, sequentially (one
request at a time, bounded in count): p50/p99 on a kept-alive connection (what our clients do: one
pooled session per process) and on a new connection per request (TCP and TLS handshakes every time).
Prints a Markdown block for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import asyncpg

from bench.load import percentile
from consumer.client.query import find_documents
from consumer.client.soap import SoapClient
from ihe import tls
from tests.conftest import wait_for_port

NHS_OID = "2.16.840.1.113883.2.1.4.1"


def start(database_url: str, port: int, tls_args: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "--port", str(port), "--mllp-port", str(port + 1),
                             "--database-url", database_url, "--log-level", "WARNING", *tls_args])
    try:
        wait_for_port(port, proc, timeout=60)
    except RuntimeError:
        proc.kill()
        raise SystemExit("the registry did not start") from None
    return proc


async def measure(url: str, patient: str, queries: int, reuse: bool) -> list[float]:
    times: list[float] = []
    client = SoapClient(timeout=60)
    try:
        for _ in range(queries):
            if not reuse:  # a client of its own: a new connection, handshakes included
                await client.close()
                client = SoapClient(timeout=60)
            started = time.perf_counter()
            found = await find_documents(client, url, patient)
            times.append((time.perf_counter() - started) * 1000)
            assert found == [], found
    finally:
        await client.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tls", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="PostgreSQL URL of a user that may create databases")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--port", type=int, default=18110)
    args = parser.parse_args()
    name = f"bench_tls_{uuid.uuid4().hex[:8]}"
    asyncio.run(_sql(args.database_url, f'CREATE DATABASE "{name}"'))
    database_url = args.database_url.rsplit("/", 1)[0] + "/" + name
    from tests.tls_support import make_test_pki

    rows = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            certs = make_test_pki(Path(folder), ["registry", "client"])
            for mode, tls_args in (("plain HTTP", []), ("mutual TLS", certs.nodes["registry"].args())):
                scheme = "https" if tls_args else "http"
                if tls_args:
                    tls.configure(SimpleNamespace(**certs.nodes["client"].as_dict()))
                else:
                    tls.reset()
                proc = start(database_url, args.port, tls_args)
                url = f"{scheme}://127.0.0.1:{args.port}/registry"
                patient = f"{uuid.uuid4().int % 10**9}^^^&{NHS_OID}&ISO"
                try:
                    asyncio.run(measure(url, patient, 20, True))  # warm-up
                    for reuse in (True, False):
                        times = asyncio.run(measure(url, patient, args.queries, reuse))
                        rows.append((mode, "kept-alive" if reuse else "new connection each", percentile(times, 50),
                                     percentile(times, 99)))
                finally:
                    proc.terminate()
                    proc.wait(20)
    finally:
        asyncio.run(_sql(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    load = os.getloadavg()
    print(f"\n### Mutual TLS cost: ITI-18 FindDocuments (no entries), one request at a time, {args.queries} each\n")
    print(f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()} {os.cpu_count()} cores, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine)\n")
    print("| transport | connection | p50 ms | p99 ms |\n|---|---|---|---|")
    for mode, conn, p50, p99 in rows:
        print(f"| {mode} | {conn} | {p50:.1f} | {p99:.1f} |")
    return 0


async def _sql(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


if __name__ == "__main__":
    sys.exit(main())
