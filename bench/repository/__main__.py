"""Repository benchmark: ITI-41 throughput and ITI-43 retrieve bandwidth, over loopback HTTP.

    python -m bench.repository [--database-url ADMIN_URL] [--retrieve-mb 500] [--runs 5]

Starts real ``xds-registry`` and ``xds-repository`` processes (documents fsync'd, as in
production) on a fresh database and measures:

- ITI-41 with one 100 KB document per submission, 16 concurrent clients (our client library,
  MTOM), next to ITI-42 of the same metadata sent straight to the registry: the repository's
  own cost is the difference;
- ITI-43 of one 500 MB document, read to the end by curl (to /dev/null: what the repository
  serves; and to a file: a copy), and by our client library (MTOM parsed, SHA-1 checked, file
  written), against a plain copy (``shutil.copyfile``) of the stored blob on the same disk.
  Runs are interleaved, each after a sync (no dirty pages), medians are reported. The target is
  retrieve >= 50% of copy speed.

Prints a Markdown block for docs/benchmarks.md and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench.load import closed_loop, median
from bench.registry.__main__ import admin_url, machine, with_db
from consumer.client import DocumentRequest, SoapClient, provide_and_register, retrieve_document_set
from consumer.client.retrieve import retrieve_request
from consumer.client.source import document_entry, hash_and_size, submission_package
from ihe.metadata.ebrim import write_submit_objects_request
from ihe.namespaces import ACTION_ITI42, ACTION_ITI43
from ihe.soap import build_envelope

ROOT = Path(__file__).resolve().parents[2]
BENCH_DB = "xds_bench_repository"
REPOSITORY_ID = "1.3.6.1.4.1.21367.2024.97.1"
PATIENT_OID = "1.3.6.1.4.1.21367.13.20.1000"
MB = 1_000_000
EXTRA = os.environ.get("BENCH_REPOSITORY_ARGS", "").split()


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{what} did not start")


async def prepare_database(admin: str) -> str:
    conn = await asyncpg.connect(admin)
    await conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
    await conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    await conn.close()
    return with_db(admin, BENCH_DB)


async def record_patients(url: str, count: int) -> list[str]:
    from ihe.metadata.model import Identifiable
    from registry.patients import Demographics, record_patient

    ids = [f"BENCH{i:06d}^^^&{PATIENT_OID}&ISO" for i in range(count)]
    conn = await asyncpg.connect(url)
    try:
        for cx in ids:
            await record_patient(conn, [Identifiable.parse_cx(cx)], Demographics())
    finally:
        await conn.close()
    return ids


def submission(patient: str, content: bytes, *, for_registry: bool = False):
    entry = document_entry(patient, "application/pdf", title="bench")
    package = submission_package(patient, [entry], source_id="1.3.6.1.4.1.21367.2009.1.2.1")
    if for_registry:  # what the repository adds before ITI-42
        entry.hash, entry.size = hash_and_size(content)
        entry.repository_unique_id = REPOSITORY_ID
    return entry, package


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_iti41(repo_url: str, registry_url: str, patients: list[str], args, pids: dict[str, int]) -> dict:
    content = os.urandom(100 * 1024)
    async with SoapClient(timeout=120) as client:
        async def iti41(i: int) -> bool:
            entry, package = submission(patients[i % len(patients)], content + i.to_bytes(8, "big"))
            result = await provide_and_register(client, repo_url, package,
                                                {entry.entry_uuid: content + i.to_bytes(8, "big")})
            return result.ok

        async def iti42(i: int) -> bool:
            data = content + (10**9 + i).to_bytes(8, "big")
            _, package = submission(patients[i % len(patients)], data, for_registry=True)
            result = await client.call(registry_url, ACTION_ITI42, write_submit_objects_request(package))
            return result.body.get("status", "").endswith(":Success")

        await closed_loop(iti41, concurrency=args.concurrency, total=50, max_seconds=30)  # warm up
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        provide = await closed_loop(iti41, concurrency=args.concurrency, total=args.submissions,
                                    max_seconds=args.seconds)
        cpu_ms = {f"cpu_ms_per_iti41_{name}": round(1000 * (cpu_seconds(pid) - before[name]) / provide.requests, 1)
                  for name, pid in pids.items()}
        register = await closed_loop(iti42, concurrency=args.concurrency, total=args.submissions,
                                     max_seconds=args.seconds)
    return {
        "iti41_per_second": round(provide.per_second, 1), "iti41_p50_ms": round(provide.percentile(50), 1),
        "iti41_p99_ms": round(provide.percentile(99), 1), "iti41_requests": provide.requests,
        "iti41_failures": provide.failures,
        "iti42_direct_per_second": round(register.per_second, 1), "iti42_direct_requests": register.requests,
        "iti42_direct_failures": register.failures, **cpu_ms,
    }


def user_copy(source: Path, target: Path) -> None:
    """Copy through user space in 1 MiB blocks (what ``dd bs=1M`` does): what any receiver that writes
    a file pays, where ``shutil.copyfile`` copies inside the kernel (copy_file_range)."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        while block := src.read(1024 * 1024):
            dst.write(block)


def curl_retrieve(repo_url: str, envelope: Path, output: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail", "-o", output, "-H", "Content-Type: application/soap+xml",
                    "--data-binary", f"@{envelope}", repo_url], check=True)
    return time.perf_counter() - t0


async def measure_iti43(repo_url: str, storage: Path, patient: str, work: Path, args) -> dict:
    size = args.retrieve_mb * MB
    source = work / "big.bin"
    block = bytearray(os.urandom(MB))
    with open(source, "wb") as fh:
        for i in range(args.retrieve_mb):
            block[:8] = i.to_bytes(8, "big")
            fh.write(block)
    entry, package = submission(patient, b"")
    async with SoapClient(timeout=600) as client:
        result = await provide_and_register(client, repo_url, package, {entry.entry_uuid: source})
        assert result.ok, result.errors
    source.unlink()
    [blob] = [p for p in (storage / "objects").rglob("*") if p.is_file() and p.stat().st_size == size]
    envelope = work / "retrieve.xml"
    envelope.write_bytes(build_envelope(ACTION_ITI43, retrieve_request([DocumentRequest(REPOSITORY_ID,
                                                                                        entry.unique_id)])))
    copy_s, user_copy_s, curl_null_s, curl_file_s, client_s = [], [], [], [], []
    async with SoapClient(timeout=600) as client:
        for _ in range(args.runs):
            target = work / "copy.bin"
            os.sync()  # each measure starts with no dirty pages: writeback throttling hits all alike
            t0 = time.perf_counter()
            shutil.copyfile(blob, target)
            copy_s.append(time.perf_counter() - t0)
            target.unlink()

            os.sync()
            t0 = time.perf_counter()
            user_copy(blob, target)
            user_copy_s.append(time.perf_counter() - t0)
            target.unlink()

            os.sync()
            curl_null_s.append(curl_retrieve(repo_url, envelope, "/dev/null"))
            curl_file_s.append(curl_retrieve(repo_url, envelope, str(work / "curl.out")))
            (work / "curl.out").unlink()

            out = work / "client"
            os.sync()
            t0 = time.perf_counter()
            got = await retrieve_document_set(client, repo_url, [DocumentRequest(REPOSITORY_ID, entry.unique_id)],
                                              dest_dir=out)
            client_s.append(time.perf_counter() - t0)
            assert got.ok and got.documents[0].size == size
            shutil.rmtree(out)

    def rate(seconds: list[float]) -> dict:
        return {"median_mb_s": round(size / median(seconds) / MB), "best_mb_s": round(size / min(seconds) / MB)}

    return {"size_mb": args.retrieve_mb, "runs": args.runs, "plain_copy": rate(copy_s),
            "user_space_copy": rate(user_copy_s),
            "curl_to_dev_null": rate(curl_null_s), "curl_to_file": rate(curl_file_s),
            "client_library_to_file": rate(client_s)}


def markdown(info: dict) -> str:
    r41, r43 = info["iti41"], info["iti43"]
    copy = r43["plain_copy"]["median_mb_s"]

    def pct(key: str) -> str:
        return f"{100 * r43[key]['median_mb_s'] / copy:.0f}%"

    return "\n".join([
        f"### {info['date']}, {info['machine']}",
        "",
        "| measure | result |",
        "| --- | --- |",
        f"| ITI-41, 100 KB document per submission, concurrency {info['settings']['concurrency']} (MTOM, fsync, "
        f"ITI-42 to the registry) | {r41['iti41_per_second']} submissions/s, p50 {r41['iti41_p50_ms']} ms, "
        f"p99 {r41['iti41_p99_ms']} ms |",
        f"| ITI-42 of the same metadata straight to the registry (for comparison) | "
        f"{r41['iti42_direct_per_second']} submissions/s |",
        f"| CPU per ITI-41: repository process / registry process | {r41['cpu_ms_per_iti41_repository']} ms / "
        f"{r41['cpu_ms_per_iti41_registry']} ms |",
        f"| plain copy of the stored {r43['size_mb']} MB blob, same disk (`shutil.copyfile`, in-kernel) | {copy} MB/s "
        "median |",
        f"| the same copy through user space, 1 MiB read/write (as `dd bs=1M`) | "
        f"{r43['user_space_copy']['median_mb_s']} MB/s median |",
        f"| ITI-43 {r43['size_mb']} MB, curl to /dev/null | {r43['curl_to_dev_null']['median_mb_s']} MB/s median "
        f"({pct('curl_to_dev_null')} of copy) |",
        f"| ITI-43 {r43['size_mb']} MB, curl to a file | {r43['curl_to_file']['median_mb_s']} MB/s median "
        f"({pct('curl_to_file')} of copy) |",
        f"| ITI-43 {r43['size_mb']} MB, our client library (MTOM parsed, SHA-1, file) | "
        f"{r43['client_library_to_file']['median_mb_s']} MB/s median ({pct('client_library_to_file')} of copy) |",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.repository", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="PostgreSQL URL of a user that may create databases")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--submissions", type=int, default=3000, help="most ITI-41 submissions to send")
    parser.add_argument("--seconds", type=float, default=30.0, help="longest ITI-41 measurement")
    parser.add_argument("--retrieve-mb", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5, help="interleaved retrieve/copy runs")
    parser.add_argument("--port", type=int, default=18020)
    parser.add_argument("--work-dir", type=Path, default=None, help="folder for storage and copies (default: a "
                        "temporary folder on the disk of /tmp)")
    args = parser.parse_args()

    admin, embedded = admin_url(args.database_url)
    url = asyncio.run(prepare_database(admin))
    work = Path(tempfile.mkdtemp(prefix="bench-repository-", dir=args.work_dir))
    registry_port, repo_port = args.port, args.port + 2
    procs = []
    info: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": machine()}
    try:
        registry = subprocess.Popen(
            [sys.executable, "-m", "registry.cli", "--port", str(registry_port), "--mllp-port", str(registry_port + 1),
             "--database-url", url, "--log-level", "WARNING"], cwd=ROOT)
        procs.append(registry)
        wait_port(registry_port, registry, "registry")
        registry_url = f"http://127.0.0.1:{registry_port}/registry"
        repository = subprocess.Popen(
            [sys.executable, "-m", "repository.cli", "--port", str(repo_port), "--repository-unique-id",
             REPOSITORY_ID, "--registry-url", registry_url, "--database-url", url, "--storage-dir",
             str(work / "storage"), "--log-level", "WARNING", *EXTRA], cwd=ROOT)
        procs.append(repository)
        wait_port(repo_port, repository, "repository")
        repo_url = f"http://127.0.0.1:{repo_port}/repository"
        patients = asyncio.run(record_patients(url, 200))
        print("ITI-41 ...", flush=True)
        info["iti41"] = asyncio.run(measure_iti41(repo_url, registry_url, patients, args,
                                                  {"repository": repository.pid, "registry": registry.pid}))
        print(f"  {info['iti41']}", flush=True)
        print("ITI-43 ...", flush=True)
        info["iti43"] = asyncio.run(measure_iti43(repo_url, work / "storage", patients[0], work, args))
        print(f"  {info['iti43']}", flush=True)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
        del embedded
    info["settings"] = {"concurrency": args.concurrency, "document_kb": 100, "retrieve_mb": args.retrieve_mb}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"repository-{datetime.now(UTC).strftime('%Y-%m-%dT%H%M%S%z')}.json").write_text(json.dumps(info, indent=2))
    print(markdown(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
