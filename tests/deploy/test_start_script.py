"""scripts/start.sh installs once; later starts need no network (hospital servers often have none).

The script runs on a copy of the project. To keep the first install quick, the copy's fresh .venv
sees the packages of the environment running the tests (a .pth file), so pip only installs the
project itself; the script's own steps (venv check, pip, stamp, exec) run unchanged. Whether pip
ran is told by PIP_LOG: pip writes that file whenever it is started.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import uuid

import pytest

from tests.conftest import ROOT
from tests.deploy.helpers import Output, drop_databases, region_port_offset

IGNORED = shutil.ignore_patterns(".venv", "data", ".git", "__pycache__", "*.egg-info", ".ruff_cache",
                                 ".pytest_cache", "build")


def offline(log) -> dict[str, str]:
    """An environment in which any pip call fails fast and leaves ``log`` behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "XDS_", "VIRTUAL_ENV"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0",
               PIP_TIMEOUT="2", PIP_LOG=str(log))
    return env


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project whose first ./scripts/start.sh run installed it."""
    copy = tmp_path_factory.mktemp("start") / "xds-network"
    shutil.copytree(ROOT, copy, ignore=IGNORED)
    subprocess.run([sys.executable, "-m", "venv", str(copy / ".venv")], check=True, timeout=120)
    site = subprocess.run([str(copy / ".venv" / "bin" / "python"), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True)
    with open(os.path.join(site.stdout.strip(), "_test_environment.pth"), "w") as fh:
        fh.write(sysconfig.get_paths()["purelib"] + "\n")
    log = copy.parent / "pip-first.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDS_", "VIRTUAL_ENV"))}
    env["PIP_LOG"] = str(log)  # the machine's own pip settings (index, proxy) apply: this is the online install
    first = subprocess.run([str(copy / "scripts" / "start.sh"), "--help"], cwd=copy, env=env, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "usage: xds-local" in first.stdout
    assert log.is_file(), "the first start must install"
    return copy


def test_a_second_start_makes_no_pip_call_and_starts_offline(project, postgres_admin_url):
    log = project.parent / "pip-second.log"
    prefix = f"xdsstart_{uuid.uuid4().hex[:8]}_"
    offset = region_port_offset()  # every port moves by this much; free, below the ephemeral range
    proc = subprocess.Popen(
        [str(project / "scripts" / "start.sh"), "--database-url", postgres_admin_url, "--data-dir",
         str(project / "data"), "--port-offset", str(offset), "--database-prefix", prefix],
        cwd=project, env=offline(log), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(proc)
    try:
        output.wait_for("xds-local: ready", 180)
        assert not log.exists(), "start.sh ran pip although nothing changed"
        proc.send_signal(signal.SIGINT)  # start.sh execs xds-local: this is Ctrl-C
        assert proc.wait(60) == 0
        assert output.rest()[-1] == "xds-local: stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        asyncio.run(drop_databases(postgres_admin_url, prefix))


def test_a_changed_pyproject_installs_again(project):
    """Offline, the reinstall fails, and says why in one line."""
    (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text() + "\n# a new dependency\n")
    log = project.parent / "pip-third.log"
    run = subprocess.run([str(project / "scripts" / "start.sh"), "--help"], cwd=project, env=offline(log),
                         capture_output=True, text=True, timeout=300)
    assert log.is_file(), "pyproject.toml changed: start.sh must install again"
    assert run.returncode != 0
    assert "it needs the package index (the network) once, and again after pyproject.toml changes" in run.stderr
