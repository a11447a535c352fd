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
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ihe.database import resolve_database_url

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
    port: int  # the HTTP port that tells it is up


def services(args: argparse.Namespace, server_url: str) -> list[Service]:
    host, o, prefix = args.host, args.port_offset, args.database_prefix
    registry_url = f"http://{host}:{args.registry_port + o}/registry"
    py = sys.executable
    found = [Service("registry", [
        py, "-m", "registry.cli", "--host", host, "--port", str(args.registry_port + o), "--mllp-host", host,
        "--mllp-port", str(args.mllp_port + o), "--database-url", database_url(server_url, f"{prefix}registry"),
        "--affinity-domain-oid", NHS_NUMBER_OID], f"{prefix}registry", args.registry_port + o)]
    for h in HOSPITALS:
        db = prefix + h.name.replace("-", "_")
        found.append(Service(f"{h.name} repository", [
            py, "-m", "repository.cli", "--host", host, "--port", str(h.repository_port + o),
            "--repository-unique-id", h.repository_unique_id, "--registry-url", registry_url,
            "--storage-dir", str(args.data_dir / h.name / "documents"),
            "--database-url", database_url(server_url, f"{db}_repository")], f"{db}_repository",
            h.repository_port + o))
        found.append(Service(f"{h.name} imaging source", [
            py, "-m", "imaging_source.cli", "serve", "--host", host, "--port", str(h.imaging_port + o),
            "--dicom-host", host, "--dicom-port", str(h.dicom_port + o), "--ae-title", h.ae_title,
            "--storage-dir", str(args.data_dir / h.name / "images"),
            "--database-url", database_url(server_url, f"{db}_imaging"),
            "--repository-unique-id", h.repository_unique_id,
            "--repository-url", f"http://{host}:{h.repository_port + o}/repository",
            "--registry-url", registry_url,
            "--patient-id-issuer-oid", h.hospital_number_oid, "--affinity-domain-oid", NHS_NUMBER_OID,
            "--pix-host", host, "--pix-port", str(args.mllp_port + o)], f"{db}_imaging", h.imaging_port + o))
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


def wait_until_listening(host: str, ports: list[int], procs: list[subprocess.Popen], timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        try:
            with socket.create_connection((host, pending[0]), timeout=0.5):
                pending.pop(0)
        except OSError:
            time.sleep(0.2)
    return not pending


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
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir.resolve()

    server_url, embedded = resolve_database_url(args.database_url, args.data_dir)
    network = services(args, server_url)
    asyncio.run(ensure_databases(server_url, [s.database for s in network]))
    procs = [(s.name, subprocess.Popen(s.command)) for s in network]
    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    status = 0
    if wait_until_listening(args.host, [s.port for s in network], [p for _, p in procs]):
        print(f"\nxds-local: database server {server_url}\n{endpoints(args)}\nCtrl-C stops everything.\n",
              flush=True)
    try:
        while not stop:
            for name, p in procs:
                if p.poll() is not None:
                    print(f"xds-local: {name} exited with {p.returncode}; stopping everything", file=sys.stderr)
                    stop, status = True, 1
            time.sleep(0.5)
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.terminate()
        for _, p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        del embedded
    return status


if __name__ == "__main__":
    sys.exit(main())
