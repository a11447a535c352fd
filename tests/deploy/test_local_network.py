"""The README's run command starts every service: xds-local brings the network up and down."""

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import asyncpg

from tests.conftest import ROOT


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


def test_xds_local_starts_registry_repositories_and_imaging_sources(postgres_admin_url, tmp_path):
    prefix = f"xdslocal_{uuid.uuid4().hex[:8]}_"
    offset = 20000 + random.randrange(1000) * 10  # every port of the network moves by this much
    proc = subprocess.Popen(
        [sys.executable, "-m", "local_network.cli", "--database-url", postgres_admin_url, "--data-dir",
         str(tmp_path), "--port-offset", str(offset), "--database-prefix", prefix],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = ""
        deadline = time.monotonic() + 120
        while "Ctrl-C stops everything" not in output:
            assert time.monotonic() < deadline, f"xds-local did not come up:\n{output}"
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"xds-local exited early:\n{output}"
            output += line
        assert get(f"http://127.0.0.1:{8010 + offset}/health") == (200, b'{"status": "ok"}')
        status, body = get(f"http://127.0.0.1:{8010 + offset}/registry?wsdl")
        assert status == 200 and b"DocumentRegistry_Service" in body
        for port in (8040 + offset, 8041 + offset):
            status, body = get(f"http://127.0.0.1:{port}/status?format=json")
            assert status == 200 and json.loads(body) == []
        for port in (8020 + offset, 8021 + offset):
            assert get(f"http://127.0.0.1:{port}/repository")[0] == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        asyncio.run(_drop_databases(postgres_admin_url, prefix))


async def _drop_databases(url: str, prefix: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for name in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", prefix + "%"):
            await conn.execute(f'DROP DATABASE "{name["datname"]}" WITH (FORCE)')
    finally:
        await conn.close()
