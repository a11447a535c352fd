"""scripts/install-ohif.sh: the pinned @ohif/app with its integrity, installed by `npm ci` only when the
installed version is not the pinned one (a restart needs no network)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

OHIF = ROOT / "consumer" / "portal" / "ohif"
SCRIPT = ROOT / "scripts" / "install-ohif.sh"


def test_the_lock_pins_exactly_the_version_of_package_json_with_its_integrity() -> None:
    wanted = json.loads((OHIF / "package.json").read_text())["dependencies"]
    lock = json.loads((OHIF / "package-lock.json").read_text())
    assert wanted == {"@ohif/app": wanted["@ohif/app"]} and wanted["@ohif/app"].startswith("3.13.")
    assert lock["packages"][""]["dependencies"] == wanted
    entry = lock["packages"]["node_modules/@ohif/app"]
    assert entry["version"] == wanted["@ohif/app"]
    assert entry["resolved"] == f"https://registry.npmjs.org/@ohif/app/-/app-{entry['version']}.tgz"
    assert entry["integrity"].startswith("sha512-")
    # Only the prebuilt package: its dependencies are the build's, already inside dist/.
    assert set(lock["packages"]) == {"", "node_modules/@ohif/app"}


def fake_tree(tmp_path: Path, installed_version: str | None) -> tuple[Path, Path, Path]:
    """A copy of the script and the package files, a fake install of ``installed_version``, and a fake npm
    that logs its arguments and installs the pinned version."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / SCRIPT.name)
    ohif = tmp_path / "consumer" / "portal" / "ohif"
    ohif.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(OHIF / name, ohif / name)
    pinned = json.loads((OHIF / "package.json").read_text())["dependencies"]["@ohif/app"]
    app = ohif / "node_modules" / "@ohif" / "app"
    if installed_version:
        (app / "dist").mkdir(parents=True)
        (app / "dist" / "index.html").write_text("<html></html>")
        (app / "package.json").write_text(json.dumps({"name": "@ohif/app", "version": installed_version}, indent=2))
    bin_dir, log = tmp_path / "bin", tmp_path / "npm.log"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text(
        f"#!/bin/sh\necho \"$PWD $*\" >> {log}\nmkdir -p node_modules/@ohif/app/dist\n"
        f"echo '<html></html>' > node_modules/@ohif/app/dist/index.html\n"
        f"printf '{{\\n  \"version\": \"{pinned}\"\\n}}\\n' > node_modules/@ohif/app/package.json\n")
    (bin_dir / "npm").chmod(0o755)
    return tmp_path / "scripts" / SCRIPT.name, bin_dir, log


def run(script: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)


def test_nothing_is_fetched_when_the_pinned_version_is_installed(tmp_path: Path) -> None:
    pinned = json.loads((OHIF / "package.json").read_text())["dependencies"]["@ohif/app"]
    script, bin_dir, log = fake_tree(tmp_path, pinned)
    result = run(script, bin_dir)
    assert result.returncode == 0, result.stderr
    assert not log.exists(), "npm ran although the pinned version was installed"


@pytest.mark.parametrize("installed", [None, "3.12.0"])
def test_npm_ci_installs_the_lock_when_missing_or_another_version(tmp_path: Path, installed: str | None) -> None:
    script, bin_dir, log = fake_tree(tmp_path, installed)
    result = run(script, bin_dir)
    assert result.returncode == 0, result.stderr
    (line,) = log.read_text().splitlines()
    cwd, *args = line.split()
    assert Path(cwd) == tmp_path / "consumer" / "portal" / "ohif"
    assert args[:2] == ["ci", "--ignore-scripts"]
    # Run again: now it is there, nothing more happens.
    assert run(script, bin_dir).returncode == 0 and len(log.read_text().splitlines()) == 1


def test_ohif_install_folder_is_git_ignored() -> None:
    out = subprocess.run(["git", "check-ignore", "-q", "consumer/portal/ohif/node_modules/@ohif/app/dist/index.html"],
                         cwd=ROOT, timeout=30)
    assert out.returncode == 0
