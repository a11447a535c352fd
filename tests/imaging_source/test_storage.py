"""FileStorage: files a crash left half-received are swept at start, others are kept."""

import os
import time
from pathlib import Path

from imaging_source.storage import FileStorage


def test_sweep_removes_only_old_half_received_files_in_the_root(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    fd, old = storage.incoming()
    os.close(fd)
    fd, fresh = storage.incoming()
    os.close(fd)
    hour_ago = time.time() - 7200
    os.utime(old, (hour_ago, hour_ago))
    kept = tmp_path / "1.2.3" / "instance.dcm"
    kept.parent.mkdir()
    kept.write_bytes(b"stored")
    os.utime(kept, (hour_ago, hour_ago))

    assert storage.sweep_incoming(older_than=3600) == 1

    assert not old.exists()
    assert fresh.exists(), "a file another process may be receiving now must stay"
    assert kept.read_bytes() == b"stored"


def test_sweep_of_a_removed_root_removes_nothing(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "root")
    (tmp_path / "root").rmdir()
    assert storage.sweep_incoming() == 0
