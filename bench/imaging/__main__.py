"""Imaging source benchmark: a 1,000-instance CT-sized study (512x512, 16 bit) through the whole path.

    python -m bench.imaging [--database-url ADMIN_URL] [--instances 1000] [--runs 3]

Measures, with real processes on loopback:
- C-STORE ingest (dcmtk storescu, one association) into ``xds-imaging-source``: instances/s;
- time from the last instance's C-STORE response to the manifest registered (RAD-68 through a
  real repository and registry), with the quiet period shown separately;
- WADO-RS whole-study retrieve (``transfer-syntax=*``, curl reading the stream) MB/s, side by side
  with Orthanc + its DICOMweb plugin (Debian orthanc, orthanc-dicomweb) serving the same study.
Prints a Markdown block for docs/benchmarks.md and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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


def make_study(folder: Path, count: int) -> tuple[str, int]:
    """``count`` CT instances of 512x512 16-bit pixels (a synthetic phantom with noise) in one series."""
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
                            "--tracker-interval", "0.1", "--log-level", "WARNING"],
                           work / "imaging_source.log", http_port, dicom_port))
        files = sorted((work / "study").glob("*.dcm"))

        t0 = time.time()
        subprocess.run([storescu, "-aec", "XDSI_SOURCE", "127.0.0.1", str(dicom_port), *map(str, files)], check=True)
        last_instance = time.time()
        ingest_rate = len(files) / (last_instance - t0)
        published = asyncio.run(manifest_published_at(imaging_db, study_uid))
        to_manifest = published - last_instance

        # Orthanc with the same study.
        o_http, o_dicom = free_port(), free_port()
        (work / "orthanc.json").write_text(json.dumps({
            "Name": "bench", "StorageDirectory": str(work / "orthanc"), "IndexDirectory": str(work / "orthanc"),
            "HttpPort": o_http, "DicomPort": o_dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "StorageCompression": False, "Plugins": [ORTHANC_DICOMWEB],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "HttpServer": {"KeepAlive": True},
        }))
        procs.append(start([orthanc, str(work / "orthanc.json")], work / "orthanc.log", o_http, o_dicom))
        subprocess.run([storescu, "-aec", "ORTHANC", "127.0.0.1", str(o_dicom), *map(str, files)], check=True)

        ours_url = f"http://127.0.0.1:{http_port}/dicomweb/studies/{study_uid}"
        orthanc_url = f"http://127.0.0.1:{o_http}/dicom-web/studies/{study_uid}"
        results: dict[str, list[tuple[int, float]]] = {"xds-imaging-source": [], "Orthanc": []}
        for _ in range(args.runs):  # interleaved, so both see the same page cache state
            results["xds-imaging-source"].append(curl_retrieve(ours_url))
            results["Orthanc"].append(curl_retrieve(orthanc_url))
        rates = {name: [b / s / 1e6 for b, s in runs] for name, runs in results.items()}
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
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "instances": args.instances, "study_mb": study_bytes / 1e6,
        "ingest_instances_per_s": ingest_rate,
        "last_instance_to_registered_manifest_s": to_manifest, "quiet_period_s": QUIET_PERIOD,
        "retrieve_mb_per_s": {k: {"best": max(v), "median": statistics.median(v), "runs": v} for k, v in rates.items()},
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"imaging-{report['date'].replace(':', '')}.json").write_text(json.dumps(report, indent=2))
    ours, theirs = report["retrieve_mb_per_s"]["xds-imaging-source"], report["retrieve_mb_per_s"]["Orthanc"]
    rows = [
        ("C-STORE ingest (dcmtk storescu, one association; fsync + PostgreSQL index per instance)",
         f"{ingest_rate:.0f} instances/s"),
        ("last instance to manifest registered (RAD-68 via repository and registry)",
         f"{to_manifest:.1f} s, of which {QUIET_PERIOD:.0f} s quiet period"),
        ("WADO-RS whole study, transfer-syntax=* (curl), xds-imaging-source",
         f"{ours['median']:.0f} MB/s median, {ours['best']:.0f} best"),
        (f"WADO-RS whole study, same request, Orthanc {orthanc_version()} + DICOMweb plugin",
         f"{theirs['median']:.0f} MB/s median, {theirs['best']:.0f} best"),
    ]
    print(f"\n### Imaging source ({report['date'][:10]}, {report['machine']})\n")
    print(f"{args.instances} CT instances, 512x512 16 bit ({report['study_mb']:.0f} MB), everything on loopback.\n")
    print("| measure | result |\n| --- | --- |")
    for measure, result in rows:
        print(f"| {measure} | {result} |")
    return 0


def orthanc_version() -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "orthanc"], capture_output=True, text=True)
        return out.stdout.split("+")[0] or "?"
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
