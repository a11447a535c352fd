"""Where instance files live, behind a small interface (a folder now, object storage later).

``put`` is durable before it returns (data and directory fsync'd, atomic rename), so a
success status sent after it never refers to bytes that a crash could lose. ``stage`` and
``make_durable`` split that in two, so that one caller can make many files durable at once
(see imaging_source.group_commit): staged bytes are under a hidden temporary name until then.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from ihe.files import fsync_dir

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class StorageError(Exception):
    """The storage could not keep or give back an object."""


def is_uid(value: str | None) -> bool:
    """A syntactically valid DICOM UID (so it is also a safe file name)."""
    return bool(value) and len(value) <= 64 and _UID.match(value) is not None


def instance_key(study_uid: str, series_uid: str, sop_instance_uid: str, version: str | None = None) -> str:
    """Where an instance's bytes live; ``version`` (a content digest) keeps two different copies of
    one SOP instance apart, so storing a resent copy never overwrites the one the index points at."""
    for uid in (study_uid, series_uid, sop_instance_uid):
        if not is_uid(uid):
            raise StorageError(f"not a valid DICOM UID: {uid!r}")
    if version is not None and not version.isalnum():
        raise StorageError(f"invalid version {version!r}")
    suffix = f".{version}" if version else ""
    return f"{study_uid}/{series_uid}/{sop_instance_uid}{suffix}.dcm"


def manifest_key(study_uid: str, sop_instance_uid: str) -> str:
    for uid in (study_uid, sop_instance_uid):
        if not is_uid(uid):
            raise StorageError(f"not a valid DICOM UID: {uid!r}")
    return f"manifests/{study_uid}/{sop_instance_uid}.dcm"


class Storage(Protocol):
    def put(self, key: str, data: bytes) -> int: ...
    def open(self, key: str) -> BinaryIO: ...
    def read(self, key: str) -> bytes: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def path(self, key: str) -> Path | None: ...


@dataclass(slots=True)
class StagedFile:
    """Bytes written (not yet fsync'd) under a temporary name beside their key's path."""

    key: str
    target: Path
    tmp: Path
    fd: int
    # Folders this write created: their entries in their parents must be made durable too.
    created_dirs: list[Path] = field(default_factory=list)


class FileStorage:
    """Objects as files under ``root``; keys are relative paths of safe characters."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key.split("/"):
            raise StorageError(f"invalid storage key {key!r}")
        return self.root / key

    def path(self, key: str) -> Path:
        return self._path(key)

    def put(self, key: str, data: bytes) -> int:
        """Write ``data`` durably under ``key`` (replacing any previous object); return its size."""
        target = self._path(key)
        created_dirs = _missing_parents(target.parent, self.root)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            # The rename is durable once its directory is; new directories need their parents' entries too.
            for d in [target.parent, *created_dirs]:
                fsync_dir(d)
        except OSError as exc:
            raise StorageError(f"could not store {key}: {exc.strerror or exc}") from exc
        return len(data)

    def stage(self, key: str, data: bytes) -> StagedFile:
        """Write ``data`` for ``key`` under a temporary name, without waiting for the disk."""
        target = self._path(key)
        created_dirs = _missing_parents(target.parent, self.root)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=target.parent)
        except OSError as exc:
            raise StorageError(f"could not store {key}: {exc.strerror or exc}") from exc
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StorageError(f"could not store {key}: {exc.strerror or exc}") from exc
        return StagedFile(key, target, Path(tmp), fd, created_dirs)

    def incoming(self) -> tuple[int, Path]:
        """A new temporary file (fd, path) for bytes whose key is not known yet (an instance still arriving):
        hidden in the root folder until :meth:`adopt` gives it its key."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=self.root)
        except OSError as exc:
            raise StorageError(f"could not receive: {exc.strerror or exc}") from exc
        return fd, Path(tmp)

    def adopt(self, key: str, tmp: Path, fd: int) -> StagedFile:
        """Stage a file written through :meth:`incoming` for ``key``. It stays under its temporary name; the
        rename to the key's folder happens in :meth:`make_durable`, after its fsync, and that folder is fsync'd
        then (the rename from one folder to another is durable once its target folder is: Maildir's pattern)."""
        target = self._path(key)
        created_dirs = _missing_parents(target.parent, self.root)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"could not store {key}: {exc.strerror or exc}") from exc
        return StagedFile(key, target, tmp, fd, created_dirs)

    def make_durable(self, staged: Sequence[StagedFile | str],
                     executor: ThreadPoolExecutor | None = None) -> list[StorageError | None]:
        """Make staged files (and keys already stored) durable together: each file fsync'd (in parallel on
        ``executor``, so the file system can merge them into few journal commits), renamed to its key, then
        each folder fsync'd once. The result says per item None (durable under its key) or why not; a staged
        file that failed is not left under its temporary name (whether to remove its key is the caller's call:
        another writer may have stored the same bytes)."""
        errors: list[StorageError | None] = [None] * len(staged)

        def sync_one(i: int) -> None:
            item = staged[i]
            try:
                if isinstance(item, StagedFile):
                    os.fsync(item.fd)
                    os.replace(item.tmp, item.target)
                else:  # stored before, maybe by a writer whose folder fsync has not happened yet
                    fd = os.open(self._path(item), os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            except OSError as exc:
                key = item.key if isinstance(item, StagedFile) else item
                errors[i] = StorageError(f"could not store {key}: {exc.strerror or exc}")

        if executor is not None and len(staged) > 1:
            list(executor.map(sync_one, range(len(staged))))
        else:
            for i in range(len(staged)):
                sync_one(i)
        folders: dict[Path, list[int]] = {}
        for i, item in enumerate(staged):
            if isinstance(item, StagedFile):
                os.close(item.fd)
                for d in [item.target.parent, *item.created_dirs]:
                    folders.setdefault(d, []).append(i)
            else:
                folders.setdefault(self._path(item).parent, []).append(i)
        for folder, users in folders.items():
            try:
                fsync_dir(folder)
            except OSError as exc:
                for i in users:
                    errors[i] = errors[i] or StorageError(f"could not store in {folder}: {exc.strerror or exc}")
        for i, item in enumerate(staged):
            if errors[i] is not None and isinstance(item, StagedFile):
                with contextlib.suppress(OSError):
                    os.unlink(item.tmp)  # when the rename did not happen; the caller decides about the key
        return errors

    def discard(self, staged: StagedFile) -> None:
        """Drop a staged file that will not be made durable."""
        with contextlib.suppress(OSError):
            os.close(staged.fd)
        with contextlib.suppress(OSError):
            os.unlink(staged.tmp)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise StorageError(f"could not open {key}: {exc.strerror or exc}") from exc

    def read(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        with contextlib.suppress(OSError):
            self._path(key).unlink()

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self.open(key) as fh:
            while chunk := fh.read(chunk_size):
                yield chunk


def _missing_parents(folder: Path, root: Path) -> list[Path]:
    """The parents of ``folder`` (up to ``root``) that do not exist yet: their entries need fsync too."""
    missing = []
    while folder != root and not folder.exists():
        missing.append(folder.parent)
        folder = folder.parent
    return missing
