"""QIDO-RS benchmark: the imaging source's searches side by side with Orthanc's on the same study.

    python -m bench.qido [--database-url ADMIN_URL] [--instances 500] [--series 4] [--runs 30]

Builds one CT study from pydicom's CT_small.dcm (new UIDs, ``--series`` series sharing ``--instances``
instances), sends it by C-STORE (pynetdicom) to a real ``xds-imaging-source`` process (its own
fresh database) and to an Orthanc with its DICOMweb plugin (Debian orthanc, orthanc-dicomweb), then
times, over HTTP on loopback, interleaved and after one warm-up each:

- Search for Series of the study (``/studies/{uid}/series``), the viewer's first request;
- Search for Instances of one series (``/studies/{uid}/series/{uid}/instances``);
- Search for Studies by Study Instance UID (the portal's form).

Prints a Markdown block for docs/benchmarks.md and the median and p90 of each.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[2]
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def make_study(instances: int, series: int) -> tuple[str, list[str], list[bytes]]:
    from pydicom.data import get_testdata_file

    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study = generate_uid()
    series_uids = [generate_uid() for _ in range(series)]
    files = []
    for n in range(instances):
        ds = original.copy()
        ds.PatientID, ds.PatientName = "BENCH1", "Bench^Qido"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uids[n % series]
        ds.SeriesNumber, ds.InstanceNumber = n % series + 1, n + 1
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return study, series_uids, files


def send(port: int, files: list[bytes]) -> None:
    from pynetdicom import AE

    first = pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True)
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port)
    if not assoc.is_established:
        sys.exit(f"no association with the Storage SCP on port {port}")
    try:
        for data in files:
            status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status
            if status != 0:
                sys.exit(f"C-STORE to port {port} answered status {status:#06x}")
    finally:
        assoc.release()


def timed_get(url: str) -> float:
    start = time.perf_counter()
    request = urllib.request.Request(url, headers={"Accept": "application/dicom+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
    elapsed = (time.perf_counter() - start) * 1000
    if response.status != 200 or not json.loads(body):
        sys.exit(f"{url} answered {response.status} with no results")
    return elapsed


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_ADMIN_URL, help="a PostgreSQL URL that may create databases")
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--series", type=int, default=4)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    orthanc = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    if orthanc is None or not Path(ORTHANC_DICOMWEB).exists():
        sys.exit("bench.qido needs Orthanc and its DICOMweb plugin: apt-get install orthanc orthanc-dicomweb")
    sys.path.insert(0, str(ROOT))
    from schemas import migrate
    from tests.conftest import free_port, wait_for_port

    name = f"xds_bench_qido_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(args.database_url)
    url = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(args.database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def schema() -> None:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn, "imaging_source")
        finally:
            await conn.close()

    study, series_uids, files = make_study(args.instances, args.series)
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    procs: list[subprocess.Popen] = []
    try:
        asyncio.run(schema())
        with tempfile.TemporaryDirectory(prefix="bench-qido-") as tmp:
            work = Path(tmp)
            port, dicom_port = free_port(), free_port()
            ours = subprocess.Popen(
                [sys.executable, "-m", "imaging_source.cli", "serve", "--port", str(port), "--dicom-port",
                 str(dicom_port), "--ae-title", "XDSI_BENCH", "--database-url", url, "--storage-dir",
                 str(work / "instances"), "--repository-unique-id", "1.3.6.1.4.1.21367.2017.2.4.99",
                 "--patient-id-issuer-oid", "1.2.826.0.1.99", "--quiet-period", "3600"],
                cwd=ROOT, stdout=(work / "source.log").open("w"), stderr=subprocess.STDOUT)
            procs.append(ours)
            wait_for_port(port, ours)
            wait_for_port(dicom_port, ours)
            o_http, o_dicom = free_port(), free_port()
            config = work / "orthanc.json"
            config.write_text(json.dumps({
                "Name": "bench-qido", "StorageDirectory": str(work / "orthanc"),
                "IndexDirectory": str(work / "orthanc"),
                "HttpPort": o_http, "DicomPort": o_dicom, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                "Plugins": [ORTHANC_DICOMWEB], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                "HttpServer": {"KeepAlive": True},
            }))
            theirs = subprocess.Popen([orthanc, str(config)], stdout=(work / "orthanc.log").open("w"),
                                      stderr=subprocess.STDOUT)
            procs.append(theirs)
            wait_for_port(o_http, theirs)
            wait_for_port(o_dicom, theirs)
            send(dicom_port, files)
            send(o_dicom, files)
            roots = {"xds-imaging-source": f"http://127.0.0.1:{port}/dicomweb",
                     "Orthanc": f"http://127.0.0.1:{o_http}/dicom-web"}
            searches = {
                "Search for Series of the study": f"studies/{study}/series",
                f"Search for Instances of one series ({args.instances // args.series} instances)":
                    f"studies/{study}/series/{series_uids[0]}/instances",
                "Search for Studies by StudyInstanceUID": f"studies?StudyInstanceUID={study}",
            }
            results: dict[str, dict[str, list[float]]] = {}
            for label, path in searches.items():
                results[label] = {who: [] for who in roots}
                for root in roots.values():
                    timed_get(f"{root}/{path}")  # warm-up
                for _ in range(args.runs):
                    for who, root in roots.items():
                        results[label][who].append(timed_get(f"{root}/{path}"))
    finally:
        for proc in procs:
            stop(proc)
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(f"\n### {datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, Python {platform.python_version()}, "
          f"{args.instances}-instance CT study in {args.series} series, {args.runs} interleaved runs\n")
    print("| search | xds-imaging-source p50 / p90 | Orthanc p50 / p90 | ratio (p50) |")
    print("| --- | --- | --- | --- |")
    for label, by in results.items():
        ours_t, theirs_t = by["xds-imaging-source"], by["Orthanc"]

        def cell(values: list[float]) -> str:
            return f"{statistics.median(values):.1f} / {statistics.quantiles(values, n=10)[-1]:.1f} ms"

        print(f"| {label} | {cell(ours_t)} | {cell(theirs_t)} | "
              f"{statistics.median(ours_t) / statistics.median(theirs_t):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
