"""XUA cost per ITI-18 request: the same FindDocuments against two real registry processes on one
database, one with ``--xua off`` and one with ``--xua required``, requests alternating between them.

    python -m bench.xua --database-url postgresql://.../some_registry_db [--queries 1000]

Also times, in this process, signing one assertion and validating one ITI-18 envelope. The database
gets the registry schema applied and one patient with 20 registered entries (ITI-42 over HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from ihe.xml import parse_xml
from ihe.xua.assertion import build_assertion, security_header
from ihe.xua.policy import load_policy
from ihe.xua.validate import validate_assertion
from tests import messages as m
from tests.conftest import free_port, wait_for_port
from tests.xua_keys import AUDIENCE, CLINICIAN, PORTAL_ISSUER, make_signer, write_trust_file

ROOT = Path(__file__).resolve().parents[1]
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"


def start(url: str, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "--port", str(port), "--mllp-port",
                             str(free_port()), "--database-url", url, "--log-level", "WARNING", *extra], cwd=ROOT)
    wait_for_port(port, proc)
    return proc, f"http://127.0.0.1:{port}/registry"


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def run(args: argparse.Namespace) -> None:
    signer = make_signer(PORTAL_ISSUER, "portal")
    tmp = Path(tempfile.mkdtemp(prefix="xua-bench-"))
    trust = write_trust_file(tmp, [signer])
    policy = load_policy("required", trust)

    t0 = time.perf_counter()
    for _ in range(200):
        assertion = build_assertion(CLINICIAN, signer, audience=AUDIENCE)
    sign_ms = (time.perf_counter() - t0) / 200 * 1000
    security = security_header(assertion)
    pid = m.new_patient_id()
    body = m.stored_query_request(m.FIND_DOCUMENTS, {"$XDSDocumentEntryPatientId": m.quoted(pid),
                                                     "$XDSDocumentEntryStatus": m.in_list(APPROVED)})
    plain = m.soap_envelope(m.ACTION_ITI18, body)
    secured = m.soap_envelope(m.ACTION_ITI18, body, extra_headers=security)
    times = []
    for _ in range(2000):
        t = time.perf_counter()
        validate_assertion(parse_xml(secured), policy)
        times.append((time.perf_counter() - t) * 1000)
    parse_only = []
    for _ in range(2000):
        t = time.perf_counter()
        parse_xml(secured)
        parse_only.append((time.perf_counter() - t) * 1000)

    off, off_url = start(args.database_url)
    try:
        on, on_url = start(args.database_url, "--xua", "required", "--xua-trust", str(trust))
    except BaseException:  # the first one must not outlive a failed start of the second
        off.terminate()
        off.wait(10)
        raise
    try:
        import asyncpg

        from ihe.metadata.model import Identifiable
        from registry.patients import Demographics, record_patient
        conn = await asyncpg.connect(args.database_url)
        await record_patient(conn, [Identifiable.parse_cx(pid)], Demographics(family="Bench"))
        await conn.close()
        headers = {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{m.ACTION_ITI18}"'}
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                built = m.submit_objects_request(pid, use_uuids=True)
                async with session.post(off_url, data=m.soap_envelope(m.ACTION_ITI42, built.xml),
                                        headers={**headers, "Content-Type": "application/soap+xml"}) as r:
                    assert r.status == 200
            results: dict[str, list[float]] = {"off": [], "required": []}
            for i in range(args.queries + 100):
                for name, url, data in (("off", off_url, plain), ("required", on_url, secured)):
                    t = time.perf_counter()
                    async with session.post(url, data=data, headers=headers) as r:
                        payload = await r.read()
                        assert r.status == 200 and payload.count(b"ExtrinsicObject ") == 20, payload[:300]
                    if i >= 100:
                        results[name].append((time.perf_counter() - t) * 1000)
    finally:
        for proc in (off, on):
            proc.terminate()
            proc.wait(10)
    print(f"sign one assertion: {sign_ms:.2f} ms; assertion {len(assertion)} bytes")
    print(f"validate one ITI-18 envelope in-process: p50 {statistics.median(times):.3f} ms, p99 "
          f"{pct(times, 0.99):.3f} ms (parse alone p50 {statistics.median(parse_only):.3f} ms)")
    for name, values in results.items():
        print(f"FindDocuments (20 entries) --xua {name}: p50 {statistics.median(values):.2f} ms, "
              f"p99 {pct(values, 0.99):.2f} ms over {len(values)}")
    print(f"ratio p50 required/off: {statistics.median(results['required']) / statistics.median(results['off']):.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.xua", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="PostgreSQL URL of a registry database")
    parser.add_argument("--queries", type=int, default=1000)
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
