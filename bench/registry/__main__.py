"""Registry benchmark: fill 1,000,000 document entries over 100,000 patients, then measure over HTTP.

    python -m bench.registry [--database-url URL] [--reuse]

Measures ITI-42 single-document submissions per second (concurrency 16) and ITI-18 FindDocuments
latency p50/p99 for patients with 20 documents, next to the same query's plain SQL time measured
by a PostgreSQL client. Prints a Markdown block for docs/benchmarks.md and writes JSON to
bench/results/. The fill goes straight into the tables (bulk load, through the store's own row
builder so rows match what ITI-42 writes); everything measured goes over HTTP to a real
``xds-registry`` process on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from bench.load import closed_loop, median, percentile
from ihe.eventloop import run
from ihe.metadata.ebrim import object_fragment, write_submit_objects_request
from ihe.metadata.model import (
    Association,
    AssociationType,
    Author,
    AvailabilityStatus,
    Code,
    DocumentEntry,
    Identifiable,
    LocalizedString,
    SubmissionPackage,
    SubmissionSet,
)
from ihe.soap import build_envelope
from registry import store
from schemas import migrate

ROOT = Path(__file__).resolve().parents[2]
AFFINITY_OID = "2.16.840.1.113883.2.1.4.1"  # NHS number
BENCH_DB = "xds_bench_registry"
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
HEAVY_PATIENTS = 1000  # patients with 20 documents: the ones FindDocuments is measured on

CLASS = [Code("721981007", "2.16.840.1.113883.6.96", LocalizedString("Diagnostic studies report")),
         Code("371525003", "2.16.840.1.113883.6.96", LocalizedString("Clinical procedure report")),
         Code("440545006", "2.16.840.1.113883.6.96", LocalizedString("Imaging"))]
TYPE = [Code("4201000179104", "2.16.840.1.113883.6.96", LocalizedString("Imaging report")),
        Code("18748-4", "2.16.840.1.113883.6.1", LocalizedString("Diagnostic imaging study"))]
FORMAT = [Code("1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1", LocalizedString("KOS")),
          Code("urn:ihe:iti:xds:2017:mimeTypeSufficient", "1.3.6.1.4.1.19376.1.2.3", LocalizedString("PDF"))]
MODALITY = [Code(m, "1.2.840.10008.2.16.4", LocalizedString(m)) for m in ("CT", "MR", "CR", "US", "DX")]
HCFT = Code("22232009", "2.16.840.1.113883.6.96", LocalizedString("Hospital"))
PRACTICE = Code("394914008", "2.16.840.1.113883.6.96", LocalizedString("Radiology"))
CONF = Code("N", "2.16.840.1.113883.5.25", LocalizedString("normal"))
CONTENT = Code("721981007", "2.16.840.1.113883.6.96", LocalizedString("Diagnostic studies report"))


def nhs_number(i: int) -> str:
    return str(9000000000 + i)


def document(patient: Identifiable, rng: random.Random, when: datetime, entry_uuid: str) -> DocumentEntry:
    return DocumentEntry(
        entry_uuid=entry_uuid, status=AvailabilityStatus.APPROVED, unique_id=f"2.25.{uuid.uuid4().int}",
        patient_id=patient, mime_type="application/dicom", title=LocalizedString("CT chest"),
        class_code=rng.choice(CLASS), type_code=rng.choice(TYPE), format_code=rng.choice(FORMAT),
        healthcare_facility_type_code=HCFT, practice_setting_code=PRACTICE, confidentiality_codes=[CONF],
        event_codes=[rng.choice(MODALITY)],
        authors=[Author(person="^Smith^John^^^Dr", institutions=["Leeds Teaching Hospitals^^^^^^^^^1.2.3"])],
        creation_time=when.strftime("%Y%m%d%H%M%S"), service_start_time=when.strftime("%Y%m%d%H%M"),
        hash=f"{rng.getrandbits(160):040x}", size=rng.randint(10_000, 5_000_000), language_code="en-GB",
        source_patient_id=Identifiable(f"RR8{rng.randint(100000, 999999)}", "1.2.826.0.1.285.0.2.0.1.2"),
        source_patient_info=["PID-5|Doe^Jane", "PID-7|19650101", "PID-8|F"],
        repository_unique_id="1.2.826.0.1.285.0.2.0.1.1",
    )


def package_for(i: int, n_documents: int, rng: random.Random) -> SubmissionPackage:
    patient = Identifiable(nhs_number(i), AFFINITY_OID)
    base = datetime(2016, 1, 1, tzinfo=UTC) + timedelta(days=rng.randint(0, 3600))
    ss = SubmissionSet(entry_uuid=f"urn:uuid:{uuid.uuid4()}", status=AvailabilityStatus.APPROVED,
                       unique_id=f"2.25.{uuid.uuid4().int}", source_id="1.2.826.0.1.285.0.2.0.1",
                       patient_id=patient, submission_time=base.strftime("%Y%m%d%H%M%S"),
                       content_type_code=CONTENT, authors=[Author(person="^Smith^John^^^Dr")])
    docs, assocs = [], []
    for k in range(n_documents):
        d = document(patient, rng, base + timedelta(days=30 * k), f"urn:uuid:{uuid.uuid4()}")
        docs.append(d)
        assocs.append(Association(entry_uuid=f"urn:uuid:{uuid.uuid4()}", status=AvailabilityStatus.APPROVED,
                                  type=AssociationType.HAS_MEMBER, source_uuid=ss.entry_uuid,
                                  target_uuid=d.entry_uuid, submission_set_status="Original"))
    return SubmissionPackage(ss, docs, [], assocs)


def rows_for_patients(first: int, last: int) -> dict[str, list[tuple]]:
    """All table rows for patients [first, last), as COPY records (runs in a worker process)."""
    rng = random.Random(first)
    batch: dict[str, list[tuple]] = {key: [] for key in FILL_TABLES}
    for i in range(first, last):
        package = package_for(i, 20 if i < HEAVY_PATIENTS else 10, rng)
        fragments = {o.entry_uuid: object_fragment(o).decode() for o in package.objects()}
        for key, rows in store.package_rows(package, fragments).items():
            if key in FILL_TABLES:
                columns = FILL_TABLES[key][1]
                batch[key].extend(tuple(_copy_value(c, row[c]) for c in columns) for row in rows)
    return batch


def _columns(spec: str) -> list[str]:
    return [c.strip() for c in spec.split(",")]


# The store's own column lists, so the fill writes exactly the rows ITI-42 writes.
FILL_TABLES = {
    "claims": ("unique_id_claim", _columns("unique_id, object_id, object_kind, hash")),
    "submission_sets": ("submission_set", _columns(store._SS_COLUMNS)),
    "documents": ("document_entry", _columns(store._DE_COLUMNS)),
    "associations": ("association", _columns(store._AS_COLUMNS)),
}
_TIME_COLUMNS = {"submission_time", "creation_time", "service_start_time", "service_stop_time"}


def _copy_value(column: str, value):
    if column in _TIME_COLUMNS and value is not None:
        return datetime.fromisoformat(value)
    return value


async def fill(url: str, patients: int) -> dict:
    conn = await asyncpg.connect(url)
    t0 = time.perf_counter()
    await conn.execute(
        "INSERT INTO patient (id, family_name, given_name, birth_date, sex)"
        " SELECT g, 'Patient' || g, 'Test', '19700101', CASE WHEN g % 2 = 0 THEN 'F' ELSE 'M' END"
        " FROM generate_series(1, $1) g", patients)
    await conn.execute(
        "INSERT INTO patient_identifier (id_value, authority, authority_namespace, authority_oid, patient)"
        " SELECT (9000000000 + g)::text, $2, NULL, $2, g FROM generate_series(1, $1) g", patients, AFFINITY_OID)
    await conn.execute("SELECT setval('patient_id_seq', $1)", patients)
    step = 500
    ranges = [(a, min(a + step, patients + 1)) for a in range(1, patients + 1, step)]
    done = 0
    with multiprocessing.Pool(max(1, (os.cpu_count() or 2))) as pool:
        for batch in pool.imap(_rows_star, ranges):
            async with conn.transaction():
                for key, (table, columns) in FILL_TABLES.items():
                    await conn.copy_records_to_table(table, records=batch[key], columns=columns)
            done += 1
            if done % 20 == 0:
                print(f"  fill: {done * step:,} / {patients:,} patients, {time.perf_counter() - t0:.0f} s", flush=True)
    await conn.execute("ANALYZE")
    count = await conn.fetchval("SELECT count(*) FROM document_entry")
    await conn.close()
    return {"documents": count, "patients": patients, "fill_seconds": round(time.perf_counter() - t0, 1)}


def _rows_star(r: tuple[int, int]) -> dict[str, list[tuple]]:
    return rows_for_patients(*r)


def register_envelope(i: int, patients: int) -> bytes:
    rng = random.Random(10_000_000 + i)
    package = package_for(HEAVY_PATIENTS + rng.randint(0, patients - HEAVY_PATIENTS - 1), 1, rng)
    # Sources send symbolic ids; the registry assigns the UUIDs.
    package.submission_set.entry_uuid = "SubmissionSet01"
    package.documents[0].entry_uuid = "Document01"
    package.associations[0].source_uuid, package.associations[0].target_uuid = "SubmissionSet01", "Document01"
    package.associations[0].entry_uuid = "Association01"
    for o in package.objects():
        o.status = None
    return build_envelope("urn:ihe:iti:2007:RegisterDocumentSet-b", write_submit_objects_request(package))


def find_documents_envelope(patient: Identifiable) -> bytes:
    from lxml import etree

    from ihe.namespaces import QUERY, RIM, qn

    req = etree.Element(qn(QUERY, "AdhocQueryRequest"), nsmap={"query": QUERY, "rim": RIM})
    etree.SubElement(req, qn(QUERY, "ResponseOption"), returnType="LeafClass", returnComposedObjects="true")
    q = etree.SubElement(req, qn(RIM, "AdhocQuery"), id=FIND_DOCUMENTS)
    for name, value in (("$XDSDocumentEntryPatientId", f"'{patient.to_cx()}'"),
                        ("$XDSDocumentEntryStatus", "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')")):
        slot = etree.SubElement(q, qn(RIM, "Slot"), name=name)
        etree.SubElement(etree.SubElement(slot, qn(RIM, "ValueList")), qn(RIM, "Value")).text = value
    return build_envelope("urn:ihe:iti:2007:RegistryStoredQuery", req)


_EXTRINSIC = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?ExtrinsicObject[\s>]")


def registry_statement(envelope: bytes):
    """The SQL statement the registry's ITI-18 handler runs for this request."""
    from ihe.soap import parse_envelope
    from ihe.xml import parse_xml
    from registry.stored_query import lookup
    from registry.stored_query.params import parse_parameters
    from registry.stored_query.request import ReturnType, parse_adhoc_query_request
    from registry.stored_query.sql import Sql

    query = parse_adhoc_query_request(parse_envelope(parse_xml(envelope)).body)
    stored = lookup(query.query_id)
    params = parse_parameters(stored.params, stored.alternatives, query.slots)
    return stored.build(params, Sql(query.return_type is ReturnType.LEAF_CLASS), 5001)


async def plain_sql_times(url: str, targets: list[Identifiable], results: dict) -> None:
    # The same query as plain SQL from a PostgreSQL client (round trip, rows fetched), and the
    # server-side execution time from EXPLAIN ANALYZE.
    # The statement is the one the registry runs for the request (same SQL text and arguments).
    statements = [registry_statement(find_documents_envelope(p)) for p in targets]
    conn = await asyncpg.connect(url)
    sql_ms, server_ms = [], []
    for s in statements:
        t0 = time.perf_counter()
        rows = await conn.fetch(s.text, *s.args)
        sql_ms.append((time.perf_counter() - t0) * 1000)
        assert len(rows) >= 20, f"{len(rows)} documents, expected 20"
    for s in statements[:200]:
        plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {s.text}", *s.args)
        server_ms.append(json.loads(plan)[0]["Execution Time"])
    await conn.close()
    results["plain_sql"] = {"client_p50_ms": round(percentile(sql_ms, 50), 3),
                            "client_p99_ms": round(percentile(sql_ms, 99), 3),
                            "server_execution_p50_ms": round(percentile(server_ms, 50), 3)}
    results["iti18_vs_plain_sql"] = round(results["iti18_find_documents"]["p50_ms"]
                                          / results["plain_sql"]["client_p50_ms"], 2)


async def measure(url: str, registry_url: str, args: argparse.Namespace) -> dict:
    headers = {"Content-Type": "application/soap+xml; charset=UTF-8"}
    results: dict = {}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        # ITI-18 FindDocuments for patients with 20 documents, one request at a time, measured first
        # so that the write load's checkpoints and autovacuum do not land in it.
        rng = random.Random(7)
        targets = [Identifiable(nhs_number(rng.randint(1, HEAVY_PATIENTS - 1)), AFFINITY_OID)
                   for _ in range(args.queries)]
        queries = [find_documents_envelope(p) for p in targets]
        counts = []

        async def find(i: int) -> bool:
            async with http.post(registry_url, data=queries[i], headers=headers) as resp:
                text = await resp.read()
                counts.append(len(_EXTRINSIC.findall(text)))
                return resp.status == 200 and b"ResponseStatusType:Success" in text

        await closed_loop(find, concurrency=1, total=min(200, len(queries)), max_seconds=30)  # warm
        counts.clear()
        q = await closed_loop(find, concurrency=1, total=len(queries), max_seconds=120)
        results["iti18_find_documents"] = {
            "requests": q.requests, "failures": q.failures, "p50_ms": round(q.percentile(50), 3),
            "p99_ms": round(q.percentile(99), 3), "documents_per_response_median": median(counts)}
        print(f"  ITI-18 FindDocuments: p50 {q.percentile(50):.2f} ms, p99 {q.percentile(99):.2f} ms", flush=True)

        await plain_sql_times(url, targets, results)

        # ITI-42: single-document submissions, concurrency 16, messages built before timing.
        bodies = [register_envelope(i, args.patients) for i in range(args.submissions)]

        async def submit(i: int) -> bool:
            async with http.post(registry_url, data=bodies[i], headers=headers) as resp:
                text = await resp.read()
                return resp.status == 200 and b"ResponseStatusType:Success" in text

        await closed_loop(submit, concurrency=args.concurrency, total=min(200, len(bodies)), max_seconds=30)  # warm
        bodies = bodies[200:]
        r = await closed_loop(submit, concurrency=args.concurrency, total=len(bodies), max_seconds=args.seconds)
        results["iti42"] = {"submissions": r.requests, "failures": r.failures, "seconds": round(r.seconds, 2),
                            "per_second": round(r.per_second, 1), "p50_ms": round(r.percentile(50), 2),
                            "p99_ms": round(r.percentile(99), 2)}
        print(f"  ITI-42: {r.per_second:.0f}/s ({r.failures} failures)", flush=True)

    return results


def admin_url(given: str | None) -> tuple[str, object]:
    if given:
        return given, None
    # A co-located PostgreSQL is reached over its Unix-domain socket, as a one-machine deployment
    # would: TCP loopback costs the registry about a third of its CPU in kernel TCP processing here.
    for local in ("postgresql://postgres@/postgres?host=/var/run/postgresql",
                  "postgresql://postgres@127.0.0.1:5432/postgres"):
        try:
            asyncio.run(_probe(local))
            return local, None
        except Exception:
            continue
    from ihe.database import start_embedded_postgres

    return start_embedded_postgres(ROOT / "data" / "bench-postgres")


async def _probe(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=3)
    await conn.close()


def with_db(url: str, name: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, f"/{name}", p.query, p.fragment))


async def prepare_database(admin: str, reuse: bool) -> tuple[str, bool]:
    conn = await asyncpg.connect(admin)
    exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", BENCH_DB)
    if exists and not reuse:
        await conn.execute(f'DROP DATABASE "{BENCH_DB}" WITH (FORCE)')
        exists = False
    if not exists:
        await conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    await conn.close()
    url = with_db(admin, BENCH_DB)
    conn = await asyncpg.connect(url)
    await migrate(conn, "registry")
    filled = await conn.fetchval("SELECT count(*) FROM document_entry") > 0
    await conn.close()
    return url, filled


def start_registry(url: str, port: int, workers: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "registry.cli", "--port", str(port), "--mllp-port", str(port + 1),
         "--database-url", url, "--affinity-domain-oid", AFFINITY_OID, "--workers", str(workers),
         "--log-level", "WARNING"], cwd=ROOT)
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("registry did not start")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.registry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="PostgreSQL URL of a user that may create databases")
    parser.add_argument("--reuse", action="store_true", help="keep an already filled benchmark database")
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--submissions", type=int, default=20_000, help="most ITI-42 submissions to send")
    parser.add_argument("--seconds", type=float, default=30.0, help="longest ITI-42 measurement")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="registry worker processes")
    parser.add_argument("--port", type=int, default=18010)
    parser.add_argument("--fill-only", action="store_true", help="fill the database and stop")
    args = parser.parse_args()

    admin, embedded = admin_url(args.database_url)
    url, filled = asyncio.run(prepare_database(admin, args.reuse))
    info: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": machine()}
    if not filled:
        print(f"filling {args.patients:,} patients ...", flush=True)
        info["fill"] = asyncio.run(fill(url, args.patients))
        print(f"  {info['fill']}", flush=True)
    if args.fill_only:
        return 0
    proc = start_registry(url, args.port, args.workers)
    try:
        info["results"] = run(measure(url, f"http://127.0.0.1:{args.port}/registry", args))
    finally:
        proc.terminate()
        proc.wait(10)
        del embedded
    info["settings"] = {"concurrency": args.concurrency, "workers": args.workers,
                        "database": "unix socket" if "host=/" in url else urlsplit(url).netloc}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "registry.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    return 0


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}"


if __name__ == "__main__":
    sys.exit(main())
