"""bench.portal's smoke mode end to end (tiny sizes), so the benchmark does not rot; timings are not checked.

Also: interrupted while loading, it stops every process it started and drops its databases.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time

import asyncpg
import psutil

from tests.conftest import ROOT

TINY = ["--quick", "--documents", "6", "--ct-instances", "4", "--runs", "1", "--browser-runs", "1",
        "--viewer-runs", "1", "--qido-runs", "1"]


def bench(admin_url: str, *more: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.portal", "--database-url", admin_url, *more], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def databases(admin_url: str, prefix: str) -> list[str]:
    conn = await asyncpg.connect(admin_url)
    try:
        return [r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                                                       prefix + "%")]
    finally:
        await conn.close()


def prefix_of(line: str) -> str:
    found = re.search(r"databases (\S+)\* on", line)
    assert found, line
    return found.group(1)


def test_smoke_run_measures_everything_and_leaves_nothing_behind(postgres_admin_url, tmp_path):
    out = tmp_path / "result.json"
    proc = bench(postgres_admin_url, *TINY, "--json", str(out))
    seen: list[psutil.Process] = []
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "documents registered" in line:  # everything is up: remember who, to check they are gone after
            seen = psutil.Process(proc.pid).children(recursive=True)
    assert proc.wait(60) == 0, "".join(lines)
    text = "".join(lines)
    report = json.loads(out.read_text())
    results = report["results"]
    assert report["sizes"]["documents"] == 6 and report["sizes"]["ct_instances"] == 4
    for name in ("http_search_cold_ms", "http_search_warm_ms", "chromium_search_ms", "viewer_first_frame_cold_ms",
                 "viewer_first_frame_warm_ms"):
        assert len(results[name]["runs"]) == 1 and results[name]["p50"] > 0, name
    assert set(results["qido_series_ms"]) == {"portal proxy", "xds-imaging-source", "Orthanc"}
    for name in ("| search to full list, HTTP, warm |", "| CT viewer URL to first frame drawn in OHIF",
                 "| QIDO-RS series of the CT study, Orthanc |", "Load average"):
        assert name in text, text
    assert seen, "the region's processes were never seen"
    assert not [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert asyncio.run(databases(postgres_admin_url, prefix_of(lines[0]))) == []


def test_ctrl_c_while_loading_stops_everything_and_drops_the_databases(postgres_admin_url):
    proc = bench(postgres_admin_url, *TINY)
    first = proc.stdout.readline()
    prefix = prefix_of(first)
    line = first
    while "loading" not in line:
        line = proc.stdout.readline()
        assert line, "the benchmark ended before loading"
    children = psutil.Process(proc.pid).children(recursive=True)
    assert asyncio.run(databases(postgres_admin_url, prefix))
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=180)[0]
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest, rest
    assert len(children) >= 8  # xds-local and its services (registry, 3 repositories, 3 imaging sources, ...)
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert asyncio.run(databases(postgres_admin_url, prefix)) == []
