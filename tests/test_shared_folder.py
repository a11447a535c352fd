"""Without the shared reference folder the test command still passes, and says which tests it left out."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.shared import reference_dir

SELECTION = ["tests/ihe/test_mtom.py", "tests/ihe/test_messages.py"]


def pytest_run(shared: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDS_SHARED_DIR": shared}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, *SELECTION],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def deselected(run: subprocess.CompletedProcess) -> tuple[int, list[str]]:
    """pytest's own count of deselected tests, and our lines about the shared folder."""
    count = re.search(r"(\d+) deselected", run.stdout.splitlines()[-1])
    return int(count.group(1)) if count else 0, [line for line in run.stdout.splitlines() if "XDS_SHARED_DIR" in line]


def test_without_the_folder_its_tests_are_deselected_with_one_line(tmp_path):
    nowhere = tmp_path / "no-such-folder"
    run = pytest_run(str(nowhere))
    assert run.returncode == 0, run.stdout + run.stderr
    count, notes = deselected(run)
    assert count >= 2  # at least the schema checks and the captured messages
    assert notes == [
        f"{count} tests deselected: they need the shared reference folder (reference/messages, reference/xsd) and "
        f"it is not at {nowhere}: set XDS_SHARED_DIR to the folder holding reference/ (CI has it as ../shared "
        "beside the clone)"], run.stdout
    assert "failed" not in run.stdout.splitlines()[-1]


@pytest.mark.needs_shared("xsd")
def test_with_the_folder_named_by_the_variable_they_run(tmp_path):
    """A folder elsewhere, named by XDS_SHARED_DIR, is used (CI's ../shared is the default)."""
    elsewhere = tmp_path / "shared"
    (elsewhere / "reference").mkdir(parents=True)
    (elsewhere / "reference" / "xsd").symlink_to(reference_dir("xsd").resolve())
    run = pytest_run(str(elsewhere), "-rA")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASSED tests/ihe/test_messages.py::test_stored_query_request" in run.stdout  # an XSD check ran
    count, notes = deselected(run)
    assert notes == [f"{count} tests deselected: they need the shared reference folder (reference/messages) and it "
                     f"is not at {elsewhere}: set XDS_SHARED_DIR to the folder holding reference/ (CI has it as "
                     "../shared beside the clone)"]
    assert "test_reference_messages" not in run.stdout
