"""``xds-local``: the whole network on one machine, each service its own process.

One PostgreSQL (embedded when no URL is given, data under ``--data-dir``) holds one database per
service, as a small deployment would share a database server. Two hospitals are started, each
with its own repository and imaging document source, around one regional registry.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ihe.database import resolve_database_url
from local_network.readiness import Listener, port_in_use, ready

NHS_NUMBER_OID = "2.16.840.1.113883.2.1.4.1"


@dataclass(frozen=True, slots=True)
class Hospital:
    name: str
    repository_unique_id: str
    hospital_number_oid: str
    repository_port: int
    imaging_port: int
    dicom_port: int
    ae_title: str


HOSPITALS = (
    Hospital("hospital-a", "1.3.6.1.4.1.21367.2026.1.1", "1.3.6.1.4.1.21367.2026.1.2", 8020, 8040, 11112, "HOSPA_XDSI"),
    Hospital("hospital-b", "1.3.6.1.4.1.21367.2026.2.1", "1.3.6.1.4.1.21367.2026.2.2", 8021, 8041, 11113, "HOSPB_XDSI"),
)


def database_url(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def ensure_databases(server_url: str, names: list[str]) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        for name in names:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    command: list[str]
    database: str
    listeners: tuple[Listener, ...]  # all must be ready before the network is


def services(args: argparse.Namespace, server_url: str) -> list[Service]:
    host, o, prefix = args.host, args.port_offset, args.database_prefix
    registry_url = f"http://{host}:{args.registry_port + o}/registry"
    py = sys.executable
    found = [Service("registry", [
        py, "-m", "registry.cli", "--host", host, "--port", str(args.registry_port + o), "--mllp-host", host,
        "--mllp-port", str(args.mllp_port + o), "--database-url", database_url(server_url, f"{prefix}registry"),
        "--affinity-domain-oid", NHS_NUMBER_OID], f"{prefix}registry",
        (Listener("HTTP", args.registry_port + o), Listener("MLLP", args.mllp_port + o)))]
    for h in HOSPITALS:
        db = prefix + h.name.replace("-", "_")
        found.append(Service(f"{h.name} repository", [
            py, "-m", "repository.cli", "--host", host, "--port", str(h.repository_port + o),
            "--repository-unique-id", h.repository_unique_id, "--registry-url", registry_url,
            "--storage-dir", str(args.data_dir / h.name / "documents"),
            "--database-url", database_url(server_url, f"{db}_repository")], f"{db}_repository",
            (Listener("HTTP", h.repository_port + o),)))
        found.append(Service(f"{h.name} imaging source", [
            py, "-m", "imaging_source.cli", "serve", "--host", host, "--port", str(h.imaging_port + o),
            "--dicom-host", host, "--dicom-port", str(h.dicom_port + o), "--ae-title", h.ae_title,
            "--storage-dir", str(args.data_dir / h.name / "images"),
            "--database-url", database_url(server_url, f"{db}_imaging"),
            "--repository-unique-id", h.repository_unique_id,
            "--repository-url", f"http://{host}:{h.repository_port + o}/repository",
            "--registry-url", registry_url,
            "--patient-id-issuer-oid", h.hospital_number_oid, "--affinity-domain-oid", NHS_NUMBER_OID,
            "--pix-host", host, "--pix-port", str(args.mllp_port + o)], f"{db}_imaging",
            (Listener("HTTP", h.imaging_port + o), Listener("DICOM", h.dicom_port + o, h.ae_title))))
    return found


def endpoints(args: argparse.Namespace) -> str:
    host, o = args.host, args.port_offset
    lines = [f"registry            ITI-42/ITI-18  http://{host}:{args.registry_port + o}/registry  (WSDL: ?wsdl)",
             f"                    ITI-8/ITI-9    mllp://{host}:{args.mllp_port + o}  "
             f"(affinity domain {NHS_NUMBER_OID})"]
    for h in HOSPITALS:
        web = f"http://{host}:{h.imaging_port + o}"
        lines += [
            f"{h.name:<19} repository     http://{host}:{h.repository_port + o}/repository  "
            f"(repositoryUniqueId {h.repository_unique_id})",
            f"{'':<19} imaging        DICOM {h.ae_title}@{host}:{h.dicom_port + o}  RAD-69 {web}/rad69  "
            f"WADO-RS {web}/dicomweb  status {web}/status",
            f"{'':<19} hospital numbers: assigning authority {h.hospital_number_oid}",
        ]
    return "\n".join(lines)


def busy_port_message(host: str, network: list[Service], port_offset: int) -> str | None:
    """One line naming the first port already taken (another xds-local?), or None when all are free."""
    for service in network:
        for listener in service.listeners:
            if port_in_use(host, listener.port):
                return (f"xds-local: port {listener.port} ({service.name} {listener.kind}) on {host} is already in "
                        f"use, probably by another xds-local; stop that one or give this one other ports with "
                        f"--port-offset (now {port_offset}, e.g. --port-offset {port_offset + 100})")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xds-local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("XDS_DATABASE_URL"),
                        help="PostgreSQL server URL (a user that may create databases); when absent an embedded "
                             "PostgreSQL is started [env XDS_DATABASE_URL]")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="folder for all local data")
    parser.add_argument("--host", default="127.0.0.1", help="address the services listen on")
    parser.add_argument("--registry-port", type=int, default=8010)
    parser.add_argument("--mllp-port", type=int, default=2575)
    parser.add_argument("--port-offset", type=int, default=0, help="added to every port (to run two networks)")
    parser.add_argument("--database-prefix", default="xds_", help="prefix of the per-service database names")
    parser.add_argument("--ready-timeout", type=float, default=180.0,
                        help="seconds every service has to become ready before everything is stopped")
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir.resolve()

    # Ports first: a second copy must not touch the first one's database or announce its services.
    busy = busy_port_message(args.host, services(args, "postgresql:///"), args.port_offset)
    if busy:
        print(busy, file=sys.stderr)
        return 2

    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    server_url, embedded = resolve_database_url(args.database_url, args.data_dir)
    network = services(args, server_url)
    try:
        asyncio.run(ensure_databases(server_url, [s.database for s in network]))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"xds-local: cannot create the service databases on {server_url}: {exc}", file=sys.stderr)
        return 1
    # Each child in its own process group: Ctrl-C reaches only us, and we stop them in order.
    started = [(s, subprocess.Popen(s.command, process_group=0)) for s in network]
    try:
        status = supervise(args, server_url, started, lambda: stop)
    finally:
        for _, p in started:
            if p.poll() is None:
                p.terminate()
        for _, p in started:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if embedded is not None:
            embedded.cleanup()  # stops the server unless another process still uses it
    print("xds-local: stopped", flush=True)
    return status


def supervise(args: argparse.Namespace, server_url: str, started: list[tuple[Service, subprocess.Popen]],
              stopping) -> int:
    """Announce ready once every listener of every child answers; then watch until asked to stop.

    Returns 0 when stopped on request, 1 when a service exited or did not become ready in time.
    """
    pending = [(s, p, listener) for s, p in started for listener in s.listeners]
    deadline = time.monotonic() + args.ready_timeout
    while not stopping():
        for s, p in started:
            if p.poll() is not None:
                when = "" if not pending else " before it was ready"
                print(f"xds-local: {s.name} exited with {p.returncode}{when}; stopping everything",
                      file=sys.stderr, flush=True)
                return 1
        if pending:
            pending = [(s, p, li) for s, p, li in pending if not ready(p.pid, args.host, li)]
            if not pending:
                print(f"\nxds-local: database server {server_url}\n{endpoints(args)}\n", flush=True)
                print("xds-local: ready (every HTTP, MLLP and DICOM listener answers); Ctrl-C stops everything.",
                      flush=True)
            elif time.monotonic() > deadline:
                s, _, li = pending[0]
                print(f"xds-local: {s.name} {li.describe(args.host)} not ready after {args.ready_timeout:g} s; "
                      "stopping everything", file=sys.stderr, flush=True)
                return 1
        time.sleep(0.3 if pending else 0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
