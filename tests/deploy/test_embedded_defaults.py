"""Every service runs with its defaults alone: no database URL means an embedded PostgreSQL under ./data.

Each test runs the real command in an empty working folder, as the README shows it, with no XDS_*
setting in the environment, and checks that the embedded server is stopped when the command ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pydicom.data
import pytest

from tests.conftest import free_port, wait_for_port


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("XDS_")}


def run(cwd: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, env=clean_environment(), capture_output=True,
                          text=True, timeout=timeout)


def servers_running_in(folder: Path) -> list[psutil.Process]:
    """PostgreSQL servers whose data folder is under ``folder``."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if any(part.endswith("postgres") for part in cmdline[:1]) and str(folder) in " ".join(cmdline):
            found.append(p)
    return found


@pytest.fixture(autouse=True)
def no_server_left_behind(tmp_path):
    """Whatever a test asserts, stop the servers it left (a failing run must not leak PostgreSQL)."""
    yield
    for p in servers_running_in(tmp_path):
        p.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_imaging_source_status_and_import_with_defaults(tmp_path):
    status = run(tmp_path, "imaging_source.cli", "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.strip() == "every received study is published"
    assert "Traceback" not in status.stderr
    assert (tmp_path / "data" / "imaging_source" / "postgres" / "PG_VERSION").is_file()

    sample = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / sample.name).write_bytes(sample.read_bytes())
    imported = run(tmp_path, "imaging_source.cli", "import", str(folder))
    assert imported.returncode == 0, imported.stderr
    assert "1 instances stored (1 new) in 1 studies, 0 files refused" in imported.stdout
    listed = run(tmp_path, "imaging_source.cli", "status", "--all")
    assert listed.returncode == 0, listed.stderr
    assert pydicom.dcmread(sample).StudyInstanceUID in listed.stdout
    assert servers_running_in(tmp_path) == []


def test_registry_starts_with_defaults_and_stops_its_embedded_server(tmp_path):
    port, mllp_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "--port", str(port), "--mllp-port",
                             str(mllp_port)], cwd=tmp_path, env=clean_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc, timeout=120)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
            assert resp.status == 200
        assert servers_running_in(tmp_path / "data" / "registry")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    assert servers_running_in(tmp_path) == []


def test_sigterm_stops_the_embedded_server_even_after_a_killed_user(tmp_path):
    """systemd and docker stop services with SIGTERM; a user that died unannounced must not keep it alive."""
    assert run(tmp_path, "imaging_source.cli", "status").returncode == 0  # creates the data folder
    pids = tmp_path / "data" / "imaging_source" / "postgres" / ".handle_pids.json"
    pids.write_text(json.dumps([dead_pid()]))  # as a `kill -9`ed earlier run leaves it
    port, dicom_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "imaging_source.cli", "serve", "--port", str(port),
                             "--dicom-port", str(dicom_port)], cwd=tmp_path, env=clean_environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(dicom_port, proc, timeout=120)
        assert servers_running_in(tmp_path)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in output
    assert servers_running_in(tmp_path) == []
