"""Where the repository keeps document bytes: a small store interface and its filesystem version.

Documents are content-addressed by SHA-256, not by the XDS hash (SHA-1): SHA-1 collisions
can be manufactured, and two different documents sharing one stored copy would hand one
patient's report to another. The SHA-1 is computed alongside for the metadata.

Life of a document: :meth:`FileSystemStore.new_upload` stages the bytes in ``staging/`` while
hashing them (the MTOM reader writes into it chunk by chunk); :meth:`FileSystemStore.place`
makes it durable and moves it to ``objects/ab/cd/<sha256>`` unless identical bytes are there
already; :meth:`FileSystemStore.remove` deletes a blob that nothing references. Staging is
private to one process: a lock file makes a storage folder belong to one repository process,
which empties ``staging/`` at start (anything there is from a crash).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from ihe.files import fsync_dir
from ihe.mtom import Attachment, HashingFileWriter


class DocumentTooLarge(ValueError):
    """A document is larger than the configured limit."""


class StorageLocked(RuntimeError):
    """Another process already owns this storage folder."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A document's identity in the store (``key``, SHA-256) and its XDS hash and size."""

    key: str
    sha1: str
    size: int


class Upload:
    """A document being received: bytes go to a staging file while SHA-1/SHA-256/size are kept.

    Implements :class:`ihe.mtom.AttachmentSink`, so MTOM parts stream straight into it; the
    hashing and writing of big documents run on a writer thread (:class:`HashingFileWriter`).
    """

    def __init__(self, path: Path, *, max_bytes: int | None, content_id: str = "",
                 headers: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.content_id = content_id
        self.headers = dict(headers or {})
        self.max_bytes = max_bytes
        self._writer = HashingFileWriter(path, ("sha1", "sha256"))
        self.info: BlobInfo | None = None
        self.placed = False

    @property
    def size(self) -> int:
        return self._writer.size

    def write(self, data: bytes | memoryview) -> None:
        if self.max_bytes is not None and self._writer.size + len(data) > self.max_bytes:
            name = f" <{self.content_id}>" if self.content_id else ""
            raise DocumentTooLarge(f"document{name} exceeds the limit of {self.max_bytes} bytes")
        self._writer.write(data)

    def finish(self) -> None:
        digests = self._writer.finish()
        self.info = BlobInfo(digests["sha256"], digests["sha1"], self._writer.size)

    def discard(self) -> None:
        """Forget the staged bytes (idempotent; a no-op once placed)."""
        self._writer.close()
        if not self.placed:
            self.path.unlink(missing_ok=True)

    async def sync(self) -> None:
        """Make the staged bytes durable (fsync on a thread: it may take seconds for gigabytes)."""
        if not self._writer.closed:
            await asyncio.to_thread(os.fsync, self._writer.fileno())

    def _close(self) -> None:
        self._writer.close()


class DocumentStore(Protocol):
    """What the repository needs from a place to keep bytes (filesystem now, S3-compatible later)."""

    def new_upload(self, *, content_id: str = "", headers: Mapping[str, str] | None = None) -> Upload: ...

    async def place(self, upload: Upload) -> BlobInfo: ...

    def exists(self, key: str) -> bool: ...

    def attachment(self, key: str, *, content_id: str, content_type: str, size: int) -> Attachment: ...

    async def remove(self, key: str) -> None: ...

    def lock(self, key: str): ...


class FileSystemStore:
    """Content-addressed documents under one folder: ``objects/``, ``staging/``, ``.lock``."""

    def __init__(self, root: Path, *, max_document_bytes: int | None = None, durable: bool = True) -> None:
        self.root = root.resolve()
        self.objects = self.root / "objects"
        self.staging = self.root / "staging"
        self.max_document_bytes = max_document_bytes
        self.durable = durable
        self._lock_fh: BinaryIO | None = None
        self._key_locks: dict[str, tuple[asyncio.Lock, int]] = {}

    # -- process ownership ---------------------------------------------------------------------------

    def open(self) -> None:
        """Take ownership of the folder (or raise :class:`StorageLocked`) and empty ``staging/``."""
        self.objects.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / ".lock", "a+b")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StorageLocked(f"storage folder {self.root} is in use by another repository process") from None
            raise
        self._lock_fh = fh
        shutil.rmtree(self.staging)
        self.staging.mkdir()

    def close(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    # -- writing ----------------------------------------------------------------------------------------

    def new_upload(self, *, content_id: str = "", headers: Mapping[str, str] | None = None) -> Upload:
        return Upload(self.staging / f"{uuid.uuid4().hex}.part", max_bytes=self.max_document_bytes,
                      content_id=content_id, headers=headers)

    def path_of(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a storage key: {key!r}")
        return self.objects / key[:2] / key[2:4] / key

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """Serialise placing and removing one blob (deduplication vs. garbage collection)."""
        lock, users = self._key_locks.get(key, (asyncio.Lock(), 0))
        self._key_locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._key_locks[key]
            if users <= 1:
                del self._key_locks[key]
            else:
                self._key_locks[key] = (lock, users - 1)

    async def place(self, upload: Upload) -> BlobInfo:
        """Make ``upload`` durable and move it to its content address; idempotent.

        The caller holds :meth:`lock` for the key and has journaled the key first, so a
        concurrent garbage collection cannot remove the blob between here and its use.
        """
        if upload.info is None:
            raise ValueError("upload not finished")
        info = upload.info
        final = self.path_of(info.key)
        if upload.placed:
            return info
        if final.exists():
            upload.discard()
            upload.placed = True
            return info
        if self.durable:
            await upload.sync()
        upload._close()
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(upload.path, final)
        upload.placed = True
        if self.durable:
            await asyncio.to_thread(fsync_dir, final.parent)
        return info

    async def remove(self, key: str) -> None:
        self.path_of(key).unlink(missing_ok=True)

    # -- reading ----------------------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def attachment(self, key: str, *, content_id: str, content_type: str, size: int) -> Attachment:
        return Attachment(content_id=content_id, content_type=content_type, path=self.path_of(key), size=size)
