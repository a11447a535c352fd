"""The shared reference folder (published XSDs, captured ITI-41 messages) and the tests that need it.

The folder is not part of the project: CI has it as ``shared/`` beside the clone, a developer
may keep it anywhere and name it with ``XDS_SHARED_DIR``. Tests that read it are marked
``@pytest.mark.needs_shared("xsd")`` (or ``"messages"``); on a clone without the folder they
are deselected and the run ends with one line saying what to set, so the test command passes
on a fresh clone and nobody mistakes the missing checks for passed ones.

The hooks below are imported into ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_ENV = "XDS_SHARED_DIR"
_deselected = pytest.StashKey[tuple[int, list[str]]]()


def shared_dir() -> Path:
    """``$XDS_SHARED_DIR`` when set (even when it names nothing: then nothing is found), else ``../shared``."""
    configured = os.environ.get(SHARED_ENV)
    return Path(configured).expanduser() if configured else ROOT.parent / "shared"


def reference_dir(part: str) -> Path:
    """``shared/reference/<part>``: ``xsd`` (published schemas) or ``messages`` (captured ITI-41 requests)."""
    return shared_dir() / "reference" / part


def missing_message(parts: list[str]) -> str:
    wanted = ", ".join(f"reference/{p}" for p in sorted(set(parts)))
    return (f"need the shared reference folder ({wanted}) and it is not at {shared_dir()}: set {SHARED_ENV} to "
            f"the folder holding reference/ (CI has it as ../shared beside the clone)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_shared(part): reads shared/reference/<part> ('xsd' or 'messages'); "
                                       f"deselected when that folder is missing (see {SHARED_ENV})")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop, parts = [], [], []
    for item in items:
        marker = item.get_closest_marker("needs_shared")
        part = (marker.args[0] if marker.args else "xsd") if marker else None
        if part is not None and not reference_dir(part).is_dir():
            drop.append(item)
            parts.append(part)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
        config.stash[_deselected] = (len(drop), parts)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    found = config.stash.get(_deselected, None)
    if found:
        count, parts = found
        terminalreporter.write_line(f"{count} tests deselected: they {missing_message(parts)}", yellow=True,
                                    bold=True)
