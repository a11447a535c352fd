"""XUA and mutual TLS cost per ITI-18 request: the same FindDocuments against four real registry processes
on one database (plain, mutual TLS, XUA, mutual TLS + XUA), requests interleaved between them so that the
shared machine's load falls on every mode alike.

    python -m bench.xua --database-url postgresql://.../some_registry_db [--queries 1000]

Each mode is measured on a kept-alive connection (what our clients do: one pooled session per process)
and on a new connection per request (TCP and, with TLS, a full handshake with client certificate every
time). Also times, in this process, signing one assertion and validating one ITI-18 envelope. The
database gets the registry schema applied and one patient with 20 registered entries (ITI-42 over HTTP).
The certificates come from a throw-away CA (tests/tls_support.py). Prints a Markdown table for
docs/benchmarks.md with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import aiohttp

from ihe import tls
from ihe.xml import parse_xml
from ihe.xua.assertion import build_assertion, security_header
from ihe.xua.policy import load_policy
from ihe.xua.validate import validate_assertion
from tests import messages as m
from tests.conftest import free_port, wait_for_port
from tests.tls_support import make_test_pki
from tests.xua_keys import AUDIENCE, CLINICIAN, PORTAL_ISSUER, make_signer, write_trust_file

ROOT = Path(__file__).resolve().parents[1]
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"


def start(url: str, *extra: str, scheme: str = "http") -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "--port", str(port), "--mllp-port",
                             str(free_port()), "--database-url", url, "--log-level", "WARNING", *extra], cwd=ROOT)
    wait_for_port(port, proc)
    return proc, f"{scheme}://127.0.0.1:{port}/registry"


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    tls: bool
    xua: bool


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def run(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()
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

    certs = make_test_pki(tmp / "tls", ["registry", "client"])
    client_tls = tls.client_context(tls.TlsConfig.from_settings(SimpleNamespace(**certs.nodes["client"].as_dict())))
    modes = [Mode("plain", False, False), Mode("mutual TLS", True, False), Mode("XUA", False, True),
             Mode("mutual TLS + XUA", True, True)]
    procs: list[subprocess.Popen] = []
    urls: dict[str, str] = {}
    try:
        for mode in modes:  # a failed start stops those already started (finally below)
            extra = [*(certs.nodes["registry"].args() if mode.tls else []),
                     *(["--xua", "required", "--xua-trust", str(trust)] if mode.xua else [])]
            proc, urls[mode.name] = start(args.database_url, *extra, scheme="https" if mode.tls else "http")
            procs.append(proc)
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
                async with session.post(urls["plain"], data=m.soap_envelope(m.ACTION_ITI42, built.xml),
                                        headers={**headers, "Content-Type": "application/soap+xml"}) as r:
                    assert r.status == 200
        # Per mode a kept-alive session and one closing its connection after every request.
        sessions = {(mode.name, keep): aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=client_tls if mode.tls else False, force_close=not keep)) for mode in modes for keep in (True, False)}
        results: dict[tuple[str, bool], list[float]] = {key: [] for key in sessions}
        try:
            for i in range(args.queries + 50):
                for mode in modes:
                    data = secured if mode.xua else plain
                    for keep in (True, False):
                        if mode.xua:  # a fresh assertion per request, as the portal's user would send
                            data = m.soap_envelope(m.ACTION_ITI18, body, extra_headers=security_header(
                                build_assertion(CLINICIAN, signer, audience=AUDIENCE)))
                        t = time.perf_counter()
                        async with sessions[mode.name, keep].post(urls[mode.name], data=data, headers=headers) as r:
                            payload = await r.read()
                            assert r.status == 200 and payload.count(b"ExtrinsicObject ") == 20, payload[:300]
                        if i >= 50:  # warm-up
                            results[mode.name, keep].append((time.perf_counter() - t) * 1000)
        finally:
            for session in sessions.values():
                await session.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    load = os.getloadavg()
    print(f"sign one assertion: {sign_ms:.2f} ms; assertion {len(assertion)} bytes")
    print(f"validate one ITI-18 envelope in-process: p50 {statistics.median(times):.3f} ms, p99 "
          f"{pct(times, 0.99):.3f} ms (parse alone p50 {statistics.median(parse_only):.3f} ms)")
    print(f"\n### TLS + XUA cost: ITI-18 FindDocuments (20 entries), {args.queries} per cell, interleaved\n")
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} {os.cpu_count()} cores, load average "
          f"{load_before[0]:.2f} at the start, {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end (shared "
          "machine)\n")
    print("| mode | kept-alive p50 ms | p99 ms | x plain | new connection p50 ms | p99 ms | x plain |")
    print("|---|---|---|---|---|---|---|")
    base = {keep: statistics.median(results["plain", keep]) for keep in (True, False)}
    for mode in modes:
        cells = []
        for keep in (True, False):
            values = results[mode.name, keep]
            p50 = statistics.median(values)
            cells.append(f"{p50:.2f} | {pct(values, 0.99):.2f} | {p50 / base[keep]:.2f}")
        print(f"| {mode.name} | {' | '.join(cells)} |")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.xua", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="PostgreSQL URL of a registry database")
    parser.add_argument("--queries", type=int, default=1000)
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
