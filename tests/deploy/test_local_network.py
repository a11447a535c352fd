"""The README's run command starts every service: xds-local brings the network up and down.

One network is started for the module; the tests run in order and the last one stops it.
"""

import asyncio
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid

import psutil
import pytest

from tests.conftest import ROOT
from tests.deploy.helpers import Output, drop_databases

HOSPITAL_DICOM = (("HOSPA_XDSI", 11112), ("HOSPB_XDSI", 11113))


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


def echoscu(ae_title: str, port: int) -> subprocess.CompletedProcess:
    """C-ECHO with dcmtk, a client we did not write; one try, no retries."""
    return subprocess.run(["echoscu", "-to", "5", "-aec", ae_title, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def xds_local(postgres_admin_url, data_dir, offset, prefix) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "local_network.cli", "--database-url", postgres_admin_url, "--data-dir",
         str(data_dir), "--port-offset", str(offset), "--database-prefix", prefix],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def network(postgres_admin_url, tmp_path_factory):
    assert shutil.which("echoscu"), "dcmtk's echoscu is missing: install the packages in scripts/debian-packages.txt"
    prefix = f"xdslocal_{uuid.uuid4().hex[:8]}_"
    offset = 20000 + random.randrange(1000) * 10  # every port of the network moves by this much
    proc = xds_local(postgres_admin_url, tmp_path_factory.mktemp("xds-local"), offset, prefix)
    net = {"proc": proc, "output": Output(proc), "offset": offset, "prefix": prefix, "url": postgres_admin_url}
    yield net
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for child in net.get("children", []):
        if child.is_running():
            child.kill()
    asyncio.run(drop_databases(postgres_admin_url, prefix))


def test_ready_is_announced_once_every_listener_answers(network):
    """The moment "ready" is printed, DICOM C-ECHO (dcmtk), MLLP and every HTTP service already work."""
    network["output"].wait_for("Ctrl-C stops everything", 180)
    offset = network["offset"]
    for ae_title, port in HOSPITAL_DICOM:
        echo = echoscu(ae_title, port + offset)
        assert echo.returncode == 0, f"C-ECHO to {ae_title} failed right after ready: {echo.stdout}{echo.stderr}"
    with socket.create_connection(("127.0.0.1", 2575 + offset), timeout=5):
        pass
    assert get(f"http://127.0.0.1:{8010 + offset}/health") == (200, b'{"status": "ok"}')
    status, body = get(f"http://127.0.0.1:{8010 + offset}/registry?wsdl")
    assert status == 200 and b"DocumentRegistry_Service" in body
    for port in (8040 + offset, 8041 + offset):
        status, body = get(f"http://127.0.0.1:{port}/status?format=json")
        assert status == 200 and json.loads(body) == []
    for port in (8020 + offset, 8021 + offset):
        assert get(f"http://127.0.0.1:{port}/repository")[0] == 200
    ready = [line for line in network["output"].lines if line.startswith("xds-local: ready")]
    assert len(ready) == 1, network["output"].lines


def test_a_second_copy_on_the_same_ports_says_so_in_one_line(network, tmp_path):
    network["output"].wait_for("Ctrl-C stops everything", 180)
    second = xds_local(network["url"], tmp_path, network["offset"], network["prefix"])
    try:
        out, _ = second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    lines = [line for line in out.splitlines() if line.strip()]
    assert second.returncode != 0, out
    assert len(lines) == 1, out
    assert "--port-offset" in lines[0] and "in use" in lines[0]
    assert network["proc"].poll() is None, "the first network must keep running"
    assert get(f"http://127.0.0.1:{8010 + network['offset']}/health")[0] == 200


def test_ctrl_c_stops_every_service_and_says_stopped(network):
    network["output"].wait_for("Ctrl-C stops everything", 180)
    proc = network["proc"]
    network["children"] = children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 5, "registry, two repositories and two imaging sources"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    lines = network["output"].rest()
    assert lines[-1] == "xds-local: stopped", lines[-5:]
    assert sum(line.startswith("xds-local: stopped") for line in lines) == 1
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    psutil.wait_procs(children, timeout=10)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
