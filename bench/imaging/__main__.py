"""Imaging source benchmark: a 1,000-instance CT-sized study (512x512, 16 bit) through the whole path.

    python -m bench.imaging [--database-url ADMIN_URL] [--instances 1000] [--rounds 3] [--runs 3]

Measures, with real processes on loopback:
- C-STORE ingest (dcmtk storescu, one association, then four in parallel) into ``xds-imaging-source``
  and into Orthanc (Debian's package, its default durable settings, a fresh one per measurement on a
  temporary folder), interleaved, ``--rounds`` times: instances/s, and the load average meanwhile;
- the same sends to Storage SCPs that keep nothing (bench/imaging/null_scp.py): pynetdicom's threaded
  acceptor, and our asyncio upper layer (ihe.dicom_ul): what each DICOM stack alone allows in one Python
  process on this machine;
- time from the last instance's C-STORE response to the manifest registered (RAD-68 through a
  real repository and registry), with the quiet period shown separately, after each of our ingests;
- WADO-RS whole-study retrieve (``transfer-syntax=*``, curl reading the stream) MB/s, side by side
  with Orthanc + its DICOMweb plugin (Debian orthanc, orthanc-dicomweb) serving the same study.
Prints a Markdown block for docs/benchmarks.md and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parents[2]
HOSPITAL_OID = "1.2.826.0.1.99"
AFFINITY_OID = "2.16.840.1.113883.2.1.4.1"
QUIET_PERIOD = 2.0
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if not path:
        sys.exit(f"bench.imaging needs {tool}: apt-get install {package}")
    return path


def make_study(folder: Path, count: int, edit: Callable[[pydicom.Dataset, int], None] | None = None) -> tuple[str, int]:
    """``count`` CT instances of 512x512 16-bit pixels (a synthetic phantom with noise) in one series;
    ``edit(dataset, n)`` may change each one (another patient, positions) before it is written."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study_uid, series_uid = generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:512, 0:512]
    body = ((xx - 256) ** 2 + (yy - 256) ** 2 < 220 ** 2).astype(np.int32) * 1000
    total = 0
    for n in range(count):
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.AccessionNumber = "BENCH1", "ACC-BENCH-1"
        ds.InstanceNumber = n + 1
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        pixels = (body + rng.integers(0, 200, (512, 512)) + n).astype(np.uint16)
        ds.PixelData = pixels.tobytes()
        if edit is not None:
            edit(ds, n)
        path = folder / f"{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return study_uid, total


def db_url(admin: str, name: str) -> str:
    parts = urlsplit(admin)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def admin_sql(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def prepare_databases(admin: str, name: str) -> tuple[str, str]:
    from schemas import migrate

    urls = []
    for suffix, component in (("reg", "registry"), ("img", "imaging_source")):
        await admin_sql(admin, f'DROP DATABASE IF EXISTS "{name}_{suffix}" WITH (FORCE)')
        await admin_sql(admin, f'CREATE DATABASE "{name}_{suffix}"')
        url = db_url(admin, f"{name}_{suffix}")
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn, component)
        finally:
            await conn.close()
        urls.append(url)
    return urls[0], urls[1]


async def record_patient(registry_url: str) -> None:
    from ihe.metadata.model import Identifiable
    from registry.patients import Demographics
    from registry.patients import record_patient as record

    conn = await asyncpg.connect(registry_url)
    try:
        await record(conn, [Identifiable("BENCH1", HOSPITAL_OID), Identifiable("9990001112", AFFINITY_OID)],
                     Demographics(family="Bench"))
    finally:
        await conn.close()


async def manifest_published_at(url: str, study_uid: str, timeout: float = 600) -> float:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = await conn.fetchval("SELECT state FROM imaging_manifest WHERE study_uid = $1 ORDER BY created_at "
                                        "DESC LIMIT 1", study_uid)
            if state == "published":
                return time.time()
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise RuntimeError("the manifest was not published in time")


def curl_retrieve(url: str) -> tuple[int, float]:
    """(bytes, seconds) of one whole-study WADO-RS retrieve read to the end by curl."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total} %{http_code}",
                          "-H", 'Accept: multipart/related; type="application/dicom"; transfer-syntax=*', url],
                         capture_output=True, text=True, check=True).stdout.split()
    if out[2] != "200":
        raise RuntimeError(f"GET {url} answered HTTP {out[2]}")
    return int(out[0]), float(out[1])


def start(cmd: list[str], log: Path, port: int, *more_ports: int) -> subprocess.Popen:
    fh = open(log, "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    fh.close()
    for p in (port, *more_ports):
        wait_port(p, proc)
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("XDS_TEST_DATABASE_URL",
                                                                 "postgresql://postgres@127.0.0.1:5432/test"),
                        help="a PostgreSQL URL allowed to create databases")
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="retrieves per server (the best and median are shown)")
    parser.add_argument("--rounds", type=int, default=3, help="ingest measurements per server and association count")
    parser.add_argument("--dicom-workers", type=int, default=os.cpu_count() or 1,
                        help="xds-imaging-source --dicom-workers (default: one per core)")
    args = parser.parse_args()
    storescu = need("storescu", "dcmtk")
    orthanc = need("Orthanc", "orthanc")
    need("curl", "curl")
    if not Path(ORTHANC_DICOMWEB).exists():
        sys.exit("bench.imaging needs the Orthanc DICOMweb plugin: apt-get install orthanc-dicomweb")

    work = Path(tempfile.mkdtemp(prefix="bench-imaging-"))
    procs: list[subprocess.Popen] = []
    try:
        print(f"generating {args.instances} instances in {work}", flush=True)
        (work / "study").mkdir()
        study_uid, study_bytes = make_study(work / "study", args.instances)
        registry_db, imaging_db = asyncio.run(prepare_databases(args.database_url, "xds_bench_imaging"))
        asyncio.run(record_patient(registry_db))

        reg_port, mllp_port, repo_port, http_port, dicom_port = (free_port() for _ in range(5))
        procs.append(start([sys.executable, "-m", "registry.cli", "--port", str(reg_port), "--mllp-port",
                            str(mllp_port), "--database-url", registry_db, "--log-level", "WARNING"],
                           work / "registry.log", reg_port, mllp_port))
        procs.append(start([sys.executable, "-m", "repository.cli", "--port", str(repo_port), "--repository-unique-id",
                            "1.3.6.1.4.1.21367.2024.97.1", "--registry-url", f"http://127.0.0.1:{reg_port}/registry",
                            "--database-url", registry_db, "--storage-dir", str(work / "repository"),
                            "--log-level", "WARNING"], work / "repository.log", repo_port))
        procs.append(start([sys.executable, "-m", "imaging_source.cli", "serve", "--port", str(http_port),
                            "--dicom-port", str(dicom_port), "--database-url", imaging_db, "--storage-dir",
                            str(work / "instances"), "--repository-url", f"http://127.0.0.1:{repo_port}/repository",
                            "--pix-port", str(mllp_port), "--affinity-domain-oid", AFFINITY_OID,
                            "--patient-id-issuer-oid", HOSPITAL_OID, "--quiet-period", str(QUIET_PERIOD),
                            "--tracker-interval", "0.1", "--dicom-workers", str(args.dicom_workers),
                            "--log-level", "WARNING"],
                           work / "imaging_source.log", http_port, dicom_port))
        files = sorted((work / "study").glob("*.dcm"))

        null_port, ul_port = free_port(), free_port()
        procs.append(start([sys.executable, "-m", "bench.imaging.null_scp", str(null_port)], work / "null_scp.log",
                           null_port))
        procs.append(start([sys.executable, "-m", "bench.imaging.null_scp", str(ul_port), "--stack", "ul"],
                           work / "null_ul.log", ul_port))
        ingest: dict[str, list[dict]] = {}
        to_manifest: list[float] = []
        orthanc_proc: subprocess.Popen | None = None
        for round_ in range(args.rounds):
            for associations in (1, 4):
                reset_ours(imaging_db, work / "instances")
                run = send(storescu, "XDSI_SOURCE", dicom_port, files, associations)
                ingest.setdefault(f"xds-imaging-source, {associations} association(s)", []).append(run)
                to_manifest.append(asyncio.run(manifest_published_at(imaging_db, study_uid)) - run["last_response"])
                print(f"round {round_ + 1}: xds-imaging-source, {associations} association(s): "
                      f"{run['rate']:.0f}/s (load {run['load']}); manifest {to_manifest[-1]:.1f} s", flush=True)
                if orthanc_proc is not None:
                    stop(orthanc_proc)
                o_http, o_dicom, orthanc_proc = start_orthanc(orthanc, work, f"orthanc-{round_}-{associations}")
                procs.append(orthanc_proc)
                run = send(storescu, "ORTHANC", o_dicom, files, associations)
                ingest.setdefault(f"Orthanc, {associations} association(s)", []).append(run)
                print(f"round {round_ + 1}: Orthanc, {associations} association(s): {run['rate']:.0f}/s "
                      f"(load {run['load']})", flush=True)
                run = send(storescu, "NULL_SCP", null_port, files, associations)
                ingest.setdefault(f"pynetdicom SCP keeping nothing, {associations} association(s)", []).append(run)
                print(f"round {round_ + 1}: pynetdicom SCP keeping nothing, {associations} association(s): "
                      f"{run['rate']:.0f}/s (load {run['load']})", flush=True)
                run = send(storescu, "NULL_SCP", ul_port, files, associations)
                ingest.setdefault(f"our upper layer keeping nothing, {associations} association(s)", []).append(run)
                print(f"round {round_ + 1}: our upper layer (ihe.dicom_ul) keeping nothing, {associations} "
                      f"association(s): {run['rate']:.0f}/s (load {run['load']})", flush=True)

        ours_url = f"http://127.0.0.1:{http_port}/dicomweb/studies/{study_uid}"
        orthanc_url = f"http://127.0.0.1:{o_http}/dicom-web/studies/{study_uid}"
        results: dict[str, list[tuple[int, float]]] = {"xds-imaging-source": [], "Orthanc": []}
        for _ in range(args.runs):  # interleaved, so both see the same page cache state
            results["xds-imaging-source"].append(curl_retrieve(ours_url))
            results["Orthanc"].append(curl_retrieve(orthanc_url))
        rates = {name: [b / s / 1e6 for b, s in runs] for name, runs in results.items()}
    except BaseException:
        for log in sorted(work.glob("*.log")):  # the folder goes: say what the services said
            print(f"--- last lines of {log.name}:", *log.read_text(errors="replace").splitlines()[-15:],
                  sep="\n", file=sys.stderr)
        raise
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        asyncio.run(admin_sql(args.database_url, 'DROP DATABASE IF EXISTS "xds_bench_imaging_reg" WITH (FORCE)'))
        asyncio.run(admin_sql(args.database_url, 'DROP DATABASE IF EXISTS "xds_bench_imaging_img" WITH (FORCE)'))
        shutil.rmtree(work, ignore_errors=True)

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(), "instances": args.instances, "study_mb": study_bytes / 1e6,
        "dicom_workers": args.dicom_workers, "rounds": args.rounds,
        "ingest": ingest, "last_instance_to_registered_manifest_s": to_manifest, "quiet_period_s": QUIET_PERIOD,
        "retrieve_mb_per_s": {k: {"best": max(v), "median": statistics.median(v), "runs": v} for k, v in rates.items()},
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"imaging-{report['date'].replace(':', '')}.json").write_text(json.dumps(report, indent=2))
    ours, theirs = report["retrieve_mb_per_s"]["xds-imaging-source"], report["retrieve_mb_per_s"]["Orthanc"]
    print(f"\n### {report['date'][:10]}, {report['machine']}\n")
    print(f"{args.instances} CT instances, 512x512 16 bit ({report['study_mb']:.0f} MB), everything on loopback; "
          f"xds-imaging-source with --dicom-workers {args.dicom_workers}, Orthanc {orthanc_version()} with its "
          f"default durable settings. {args.rounds} rounds, interleaved.\n")
    print("| C-STORE ingest (dcmtk storescu) | " + " | ".join(f"round {n + 1} (load)" for n in range(args.rounds))
          + " | median |")
    print("| --- |" + " --- |" * (args.rounds + 1))
    for name, runs in ingest.items():
        cells = " | ".join(f"{r['rate']:.0f}/s ({r['load']})" for r in runs)
        print(f"| {name} | {cells} | {statistics.median(r['rate'] for r in runs):.0f}/s |")
    print()
    print("| measure | result |\n| --- | --- |")
    print(f"| last instance to manifest registered (RAD-68 via repository and registry) | median "
          f"{statistics.median(to_manifest):.1f} s (of which {QUIET_PERIOD:.0f} s quiet period), "
          f"{min(to_manifest):.1f} to {max(to_manifest):.1f} s |")
    print(f"| WADO-RS whole study, transfer-syntax=* (curl), xds-imaging-source | {ours['median']:.0f} MB/s median, "
          f"{ours['best']:.0f} best |")
    print(f"| WADO-RS whole study, same request, Orthanc {orthanc_version()} + DICOMweb plugin | "
          f"{theirs['median']:.0f} MB/s median, {theirs['best']:.0f} best |")
    return 0


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{platform.machine()}, nproc {os.cpu_count()} ({model}), Linux {platform.release()}, " \
           f"Python {platform.python_version()}"


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def send(storescu: str, aet: str, port: int, files: list[Path], associations: int) -> dict:
    """C-STORE every file with ``associations`` storescu processes in parallel (files dealt round-robin)."""
    before = load()
    t0 = time.time()
    senders = [subprocess.Popen([storescu, "-aec", aet, "127.0.0.1", str(port), *map(str, files[i::associations])])
               for i in range(associations)]
    codes = [p.wait(1800) for p in senders]
    last = time.time()
    if any(codes):
        raise RuntimeError(f"storescu to {aet} exited with {codes}")
    return {"rate": len(files) / (last - t0), "seconds": last - t0, "last_response": last,
            "load": f"{before} .. {load()}"}


def reset_ours(imaging_db: str, storage: Path) -> None:
    """Empty the imaging source between measurements (tables and instance files), so each ingest is new."""
    from imaging_source.store import TABLES

    asyncio.run(admin_sql(imaging_db, f"TRUNCATE {TABLES} CASCADE"))
    shutil.rmtree(storage, ignore_errors=True)


def start_orthanc(orthanc: str, work: Path, name: str) -> tuple[int, int, subprocess.Popen]:
    """A fresh Orthanc on a temporary folder and free ports, its durability settings left at their defaults
    (SyncStorageArea true, SQLite index)."""
    o_http, o_dicom = free_port(), free_port()
    config = work / f"{name}.json"
    config.write_text(json.dumps({
        "Name": name, "StorageDirectory": str(work / name), "IndexDirectory": str(work / name),
        "HttpPort": o_http, "DicomPort": o_dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [ORTHANC_DICOMWEB],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "HttpServer": {"KeepAlive": True},
    }))
    return o_http, o_dicom, start([orthanc, str(config)], work / f"{name}.log", o_http, o_dicom)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def orthanc_version() -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "orthanc"], capture_output=True, text=True)
        return out.stdout.split("+")[0] or "?"
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
