"""Where instance files live, behind a small interface (a folder now, object storage later).

``put`` is durable before it returns (data and directory fsync'd, atomic rename), so a
success status sent after it never refers to bytes that a crash could lose. ``stage`` and
``make_durable`` split that in two, so that one caller can make many files durable at once
(see imaging_source.group_commit): staged bytes are under a hidden temporary name until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
import time
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
    def holds(self, key: str, sha256_hex: str) -> bool: ...
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
            try:
                fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=self.root)
            except FileNotFoundError:  # the folder was removed under us (emptied by hand): as put() would
                self.root.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=self.root)
        except OSError as exc:
            raise StorageError(f"could not receive: {exc.strerror or exc}") from exc
        return fd, Path(tmp)

    def sweep_incoming(self, older_than: float = 3600.0) -> int:
        """Remove instances a crash left half-received in the root folder (never acknowledged, so never
        promised to anyone); only those older than ``older_than`` seconds, so that another process sharing
        the folder and receiving right now keeps its files. Returns how many were removed."""
        removed = 0
        limit = time.time() - older_than
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if entry.name.startswith(".incoming-") and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat(follow_symlinks=False).st_mtime < limit:
                            os.unlink(entry.path)
                            removed += 1
        return removed

    def adopt(self, key: str, tmp: Path, fd: int) -> StagedFile:
        """Stage a file written through :meth:`incoming` for ``key``. It stays under its temporary name; the
        link under its key happens in :meth:`make_durable`, which fsyncs the file and the key's folder then
        (a link from one folder to another is durable once its target folder is: Maildir's pattern)."""
        target = self._path(key)
        created_dirs = _missing_parents(target.parent, self.root)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"could not store {key}: {exc.strerror or exc}") from exc
        return StagedFile(key, target, tmp, fd, created_dirs)

    def make_durable(self, staged: Sequence[StagedFile | str],
                     executor: ThreadPoolExecutor | None = None) -> list[StorageError | None]:
        """Make staged files (and keys already stored) durable together; the result says per item None
        (durable under its key) or why not.

        Each staged file is first linked under its key, then every file and every folder concerned is
        fsync'd at once (in parallel on ``executor``): the file system merges them into one or two journal
        commits, where fsync-rename-fsync in turn costs three in a row. Linking before the data is durable is
        safe because keys name their content: a file is never put over another (``link`` refuses; the one
        there holds the same bytes and is fsync'd instead), and a key left holding incomplete bytes by a
        crash is recognised by its digest and replaced (:meth:`holds`). Nothing reports durable before both
        its data and its folder entry are. A staged file that failed is not left under its temporary name
        (whether to remove its key is the caller's call: another writer may have stored the same bytes).
        """
        batch = _DurableBatch(self, staged)
        targets = batch.targets()
        if executor is not None and len(targets) > 1:
            outcomes = list(executor.map(_sync, targets))
        else:
            outcomes = [_sync(t) for t in targets]
        return batch.finish(outcomes)

    async def make_durable_async(self, staged: Sequence[StagedFile | str],
                                 executor: ThreadPoolExecutor) -> list[StorageError | None]:
        """:meth:`make_durable` from the event loop: the links here (a few quick system calls), each fsync
        straight on ``executor``, with no thread in between to hand them out."""
        batch = _DurableBatch(self, staged)
        loop = asyncio.get_running_loop()
        outcomes = await asyncio.gather(*(loop.run_in_executor(executor, _sync, t) for t in batch.targets()))
        return batch.finish(list(outcomes))

    def holds(self, key: str, sha256_hex: str) -> bool:
        """Whether ``key`` already holds the bytes of this SHA-256 (hex) digest. A file there with other bytes
        (a crash between :meth:`make_durable`'s link and its fsync) was never indexed: it is removed, so that
        the key can be stored again."""
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"could not read {key}: {exc.strerror or exc}") from exc
        if digest == sha256_hex:
            return True
        with contextlib.suppress(OSError):
            path.unlink()
        return False

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


class _DurableBatch:
    """The steps of FileStorage.make_durable around its fsyncs: links first, errors and clean-up after."""

    def __init__(self, storage: FileStorage, staged: Sequence[StagedFile | str]) -> None:
        self.staged = staged
        self.errors: list[StorageError | None] = [None] * len(staged)
        self.to_sync: list[tuple[int | Path, list[int]]] = []  # (fd or folder, the items that need it)
        self.opened: list[int] = []
        folders: dict[Path, list[int]] = {}
        for i, item in enumerate(staged):
            try:
                if isinstance(item, StagedFile):
                    try:
                        os.link(item.tmp, item.target)
                        fd = item.fd
                    except FileExistsError:  # the same bytes, stored by another writer meanwhile
                        fd = os.open(item.target, os.O_RDONLY)
                        self.opened.append(fd)
                    os.unlink(item.tmp)
                    parents = [item.target.parent, *item.created_dirs]
                else:  # stored before, maybe by a writer whose fsyncs have not happened yet
                    path = storage.path(item)
                    fd = os.open(path, os.O_RDONLY)
                    self.opened.append(fd)
                    parents = [path.parent]
            except (OSError, StorageError) as exc:
                self.errors[i] = StorageError(f"could not store {self.key(i)}: {getattr(exc, 'strerror', None) or exc}")
                continue
            self.to_sync.append((fd, [i]))
            for d in parents:
                folders.setdefault(d, []).append(i)
        self.to_sync.extend(folders.items())

    def key(self, i: int) -> str:
        item = self.staged[i]
        return item.key if isinstance(item, StagedFile) else item

    def targets(self) -> list[int | Path]:
        return [t for t, _ in self.to_sync]

    def finish(self, outcomes: list[OSError | None]) -> list[StorageError | None]:
        for (target, users), exc in zip(self.to_sync, outcomes, strict=True):
            if exc is not None:
                where = f" in {target}" if isinstance(target, Path) else ""
                for i in users:
                    self.errors[i] = self.errors[i] or StorageError(
                        f"could not store {self.key(i)}{where}: {exc.strerror or exc}")
        for fd in self.opened:
            os.close(fd)
        for item in self.staged:
            if isinstance(item, StagedFile):
                with contextlib.suppress(OSError):
                    os.close(item.fd)
                with contextlib.suppress(OSError):
                    os.unlink(item.tmp)  # when the link did not happen; the caller decides about the key
        return self.errors


def _sync(target: int | Path) -> OSError | None:
    """fsync a file (by descriptor) or a folder; the error, if any."""
    try:
        if isinstance(target, int):
            os.fsync(target)
        else:
            fsync_dir(target)
    except OSError as exc:
        return exc
    return None


def _missing_parents(folder: Path, root: Path) -> list[Path]:
    """The parents of ``folder`` (up to ``root``) that do not exist yet: their entries need fsync too."""
    missing = []
    while folder != root and not folder.exists():
        missing.append(folder.parent)
        folder = folder.parent
    return missing
