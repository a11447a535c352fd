"""MTOM/XOP packaging of SOAP 1.2 messages (multipart/related with application/xop+xml root).

Three layers, all shared by every actor:

* :class:`MultipartParser` is a sans-I/O incremental MIME multipart parser: feed it bytes in
  any slicing, get header/data/end events back. It accepts what real sources send: CRLF or
  bare-LF line ends, a preamble, transport padding after delimiters, any boundary.
* :func:`unpack_mtom_bytes` (whole message in memory, for small SOAP requests such as ITI-42
  and ITI-18) and :func:`read_mtom_stream` (asynchronous, attachments handed chunk by chunk
  to sinks the caller provides, e.g. temporary files, for documents of gigabytes).
  :class:`HashingFileWriter` is the sink side for files (hash while writing, big streams on a
  thread); :func:`body_chunks` feeds an aiohttp body without extra copies.
* :func:`build_mtom` writes an MTOM message whose attachments are streamed from bytes or files
  with a known Content-Length, for ITI-41 requests and ITI-43/RAD-69 responses;
  :func:`send_mtom_response` sends one as an aiohttp answer, files with sendfile(2).

Content-IDs are handled in their bare form (no angle brackets). ``xop:Include/@href`` is a
``cid:`` URL (RFC 2392) and so percent-encoded; :func:`cid_from_href` decodes it and
:func:`lookup_attachment` also tries the raw form, as some sources put the encoded form in the
Content-ID header too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import queue
import re
import threading
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote, unquote

from lxml import etree

from ihe.namespaces import XOP, qn
from ihe.xml import XMLRejected, parse_xml

XOP_INCLUDE = qn(XOP, "Include")
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_PARTS = 1000
DEFAULT_MAX_ROOT_BYTES = 50 * 1024 * 1024
READ_CHUNK = 256 * 1024


class MTOMError(ValueError):
    """The message is not well-formed MIME multipart/MTOM; the text is safe to send back."""


# --- header values -----------------------------------------------------------------------------

_PARAM = re.compile(r'\s*;\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into its lower-cased media type and parameters.

    Quoted parameter values may contain ``;`` (e.g. .NET boundaries and start-info), so the
    value is tokenised rather than split on semicolons.
    """
    value = value.strip()
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    rest = ";" + rest if rest else ""
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m:
            break  # trailing garbage: keep what was understood
        name, raw = m.group(1).lower(), m.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name] = raw
        pos = m.end()
    return media.strip().lower(), params


def bare_content_id(value: str | None) -> str:
    """A Content-ID (or start parameter) without whitespace and angle brackets."""
    value = (value or "").strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value


def cid_from_href(href: str) -> str:
    """The Content-ID an ``xop:Include`` href (``cid:`` URL) points to, percent-decoded."""
    href = href.strip()
    if href[:4].lower() != "cid:":
        raise MTOMError(f"xop:Include href {href!r} is not a cid: URL")
    return bare_content_id(unquote(href[4:]))


def href_for(content_id: str) -> str:
    """The ``cid:`` URL for ``content_id``, percent-encoded as RFC 2392 requires."""
    return "cid:" + quote(content_id, safe="@.-_~!$&'()*+,;=:")


def lookup_attachment(attachments: Mapping[str, Any], href: str) -> Any:
    """The attachment an href names, trying the decoded and the raw form; KeyError if none."""
    cid = cid_from_href(href)
    if cid in attachments:
        return attachments[cid]
    raw = bare_content_id(href.strip()[4:])
    if raw in attachments:
        return attachments[raw]
    raise KeyError(cid)


def new_content_id(domain: str = "xds.invalid") -> str:
    return f"{uuid.uuid4().hex}@{domain}"


# --- sans-I/O multipart parser ------------------------------------------------------------------


@dataclass(slots=True)
class PartHeaders:
    headers: dict[str, str]  # lower-cased names


@dataclass(slots=True)
class PartData:
    data: bytes | memoryview  # a memoryview of the fed bytes where that avoids a copy


@dataclass(slots=True)
class PartEnd:
    pass


Event = PartHeaders | PartData | PartEnd

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _EPILOGUE = range(5)
_HEADER_END = re.compile(rb"\n\r?\n")


def _parse_header_block(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    last: str | None = None
    for raw in block.split(b"\n"):
        line = raw.rstrip(b"\r").decode("latin-1")
        if not line:
            continue
        if line[0] in " \t" and last is not None:  # folded continuation line
            headers[last] += " " + line.strip()
            continue
        name, sep, val = line.partition(":")
        if not sep or not name.strip():
            raise MTOMError(f"malformed MIME part header line {line[:80]!r}")
        last = name.strip().lower()
        headers[last] = val.strip()
    return headers


class MultipartParser:
    """Incremental MIME multipart parser (RFC 2046), tolerant of bare LF line ends.

    The delimiter is searched as ``LF "--" boundary``; a CR right before it belongs to the
    delimiter too. At most ``len(delimiter)`` bytes are held back between feeds, so part
    data flows through with bounded memory whatever the part size.
    """

    def __init__(self, boundary: str, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                 max_parts: int = DEFAULT_MAX_PARTS) -> None:
        if not boundary or len(boundary) > 200:
            raise MTOMError("the multipart boundary parameter is missing or longer than 200 characters")
        try:
            self._delimiter = b"\n--" + boundary.encode("latin-1")
        except UnicodeEncodeError:  # a header is text, the body bytes: such a boundary can match nothing
            raise MTOMError(f"the multipart boundary {boundary!r} has characters that are not ISO-8859-1") from None
        self._buf = bytearray(b"\n")  # the first delimiter may open the body without a line end
        self._state = _PREAMBLE
        self._max_header_bytes = max_header_bytes
        self._max_parts = max_parts
        self.parts = 0

    @property
    def finished(self) -> bool:
        return self._state == _EPILOGUE

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self._state == _EPILOGUE:
            return events
        delimiter = self._delimiter
        if self._state == _BODY and len(self._buf) <= len(delimiter) + 1 and len(data) > 4 * len(delimiter):
            data = self._feed_body(data, events)
            if not data:
                return events
        self._buf += data
        buf = self._buf
        while True:
            if self._state == _BODY:
                i = buf.find(delimiter)
                if i < 0:
                    safe = len(buf) - len(delimiter)
                    if safe > 0:
                        events.append(PartData(bytes(memoryview(buf)[:safe])))
                        del buf[:safe]
                    return events
                end = i - 1 if i > 0 and buf[i - 1] == 0x0D else i
                if end > 0:
                    events.append(PartData(bytes(memoryview(buf)[:end])))
                events.append(PartEnd())
                del buf[: i + len(delimiter)]
                self._state = _AFTER_DELIMITER
            elif self._state == _PREAMBLE:
                i = buf.find(delimiter)
                if i < 0:
                    keep = len(delimiter)
                    if len(buf) > keep:
                        del buf[:-keep]
                    return events
                del buf[: i + len(delimiter)]
                self._state = _AFTER_DELIMITER
            elif self._state == _AFTER_DELIMITER:
                if len(buf) < 2:
                    return events
                if buf[:2] == b"--":
                    self._state = _EPILOGUE
                    buf.clear()
                    if self.parts == 0:
                        raise MTOMError("the multipart message has no parts")
                    return events
                nl = buf.find(b"\n")
                if nl < 0:
                    if len(buf) > 1024:
                        raise MTOMError("malformed multipart delimiter line")
                    return events
                if buf[:nl].strip(b" \t\r"):
                    raise MTOMError("malformed multipart delimiter: the boundary is followed by other text")
                del buf[: nl + 1]
                self.parts += 1
                if self.parts > self._max_parts:
                    raise MTOMError(f"more than {self._max_parts} MIME parts")
                self._state = _HEADERS
            elif self._state == _HEADERS:
                if buf[:1] == b"\n" or buf[:2] == b"\r\n":  # a part without headers
                    del buf[: 1 if buf[:1] == b"\n" else 2]
                    events.append(PartHeaders({}))
                    self._state = _BODY
                    continue
                m = _HEADER_END.search(buf)
                if m is None:
                    if len(buf) > self._max_header_bytes:
                        raise MTOMError(f"MIME part headers exceed {self._max_header_bytes} bytes")
                    return events
                if m.start() > self._max_header_bytes:
                    raise MTOMError(f"MIME part headers exceed {self._max_header_bytes} bytes")
                events.append(PartHeaders(_parse_header_block(bytes(buf[: m.start()]))))
                del buf[: m.end()]
                self._state = _BODY

    def _feed_body(self, data: bytes, events: list[Event]) -> bytes:
        """Body data without copying it: search the small held-back tail plus ``data`` in place.

        Emits zero-copy memoryview slices of ``data``. Returns what follows a delimiter found
        in ``data`` (state then AFTER_DELIMITER, buffer empty; maybe b"") or b"" when all was body.
        """
        if not isinstance(data, bytes):  # slices handed out must not change under the consumer
            data = bytes(data)
        delimiter = self._delimiter
        size = len(delimiter)
        tail = bytes(self._buf)
        i = (tail + data[: size - 1]).find(delimiter) if tail else -1  # a delimiter across the junction
        if i < 0:
            j = data.find(delimiter)
            i = len(tail) + j if j >= 0 else -1
        view = memoryview(data)
        if i < 0:
            keep = size + 1  # a CR and all but the last byte of a delimiter may be at the end
            if tail:
                events.append(PartData(tail))
            events.append(PartData(view[: len(data) - keep]))
            self._buf = bytearray(data[len(data) - keep:])
            return b""
        end = i
        if end > 0 and (tail[end - 1] if end <= len(tail) else data[end - 1 - len(tail)]) == 0x0D:
            end -= 1
        if end <= len(tail):
            if end > 0:
                events.append(PartData(tail[:end]))
        else:
            if tail:
                events.append(PartData(tail))
            events.append(PartData(view[: end - len(tail)]))
        events.append(PartEnd())
        self._buf = bytearray()
        self._state = _AFTER_DELIMITER
        return data[i + size - len(tail):]

    def close(self) -> None:
        """Declare the end of input; a message without its closing delimiter is truncated."""
        if self._state != _EPILOGUE:
            raise MTOMError("the multipart message is truncated: its closing delimiter is missing")


# --- part body decoding ---------------------------------------------------------------------------


class _Identity:
    def feed(self, data: bytes | memoryview) -> bytes | memoryview:
        return data

    def flush(self) -> bytes:
        return b""


class _Base64Decoder:
    """Incremental base64 decoding of a part body that may be line-wrapped."""

    _WS = re.compile(rb"[\s]+")

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes | memoryview) -> bytes:
        data = self._pending + self._WS.sub(b"", bytes(data))
        cut = len(data) - len(data) % 4
        self._pending = data[cut:]
        try:
            return base64.b64decode(data[:cut], validate=True)
        except binascii.Error as exc:
            raise MTOMError(f"invalid base64 in a MIME part: {exc}") from None

    def flush(self) -> bytes:
        if self._pending:
            raise MTOMError("invalid base64 in a MIME part: truncated quantum")
        return b""


def _decoder(headers: Mapping[str, str]) -> _Identity | _Base64Decoder:
    cte = headers.get("content-transfer-encoding", "binary").strip().lower()
    if cte in ("binary", "8bit", "7bit", ""):
        return _Identity()
    if cte == "base64":
        return _Base64Decoder()
    raise MTOMError(f"unsupported Content-Transfer-Encoding {cte!r} (binary, 8bit, 7bit or base64 expected)")


def multipart_boundary(content_type: str) -> tuple[str, dict[str, str]]:
    """The boundary and parameters of a multipart/related Content-Type, or MTOMError."""
    media, params = parse_content_type(content_type)
    if media != "multipart/related":
        raise MTOMError(f"Content-Type {media or '(none)'} is not multipart/related")
    boundary = params.get("boundary")
    if not boundary:
        raise MTOMError("the multipart/related Content-Type has no boundary parameter")
    return boundary, params


# --- reading: in memory -------------------------------------------------------------------------------


@dataclass(slots=True)
class MemoryPart:
    headers: dict[str, str]
    chunks: list[bytes] = field(default_factory=list)

    @property
    def content_id(self) -> str:
        return bare_content_id(self.headers.get("content-id"))


def split_parts(content_type: str, body: bytes) -> tuple[list[MemoryPart], dict[str, str]]:
    """Every part of an in-memory multipart message, decoded; and the Content-Type parameters."""
    boundary, params = multipart_boundary(content_type)
    parser = MultipartParser(boundary)
    parts: list[MemoryPart] = []
    decoder: _Identity | _Base64Decoder = _Identity()
    for event in parser.feed(body):
        if isinstance(event, PartHeaders):
            parts.append(MemoryPart(event.headers))
            decoder = _decoder(event.headers)
        elif isinstance(event, PartData):
            parts[-1].chunks.append(decoder.feed(event.data))
        else:
            parts[-1].chunks.append(decoder.flush())
    parser.close()
    return parts, params


def _root_index(parts: Sequence[MemoryPart], start: str | None) -> int:
    if not start:
        return 0
    want = bare_content_id(start)
    for i, part in enumerate(parts):
        if part.content_id == want:
            return i
    raise MTOMError(f"no MIME part has the Content-ID <{want}> named by the start parameter")


def inline_xop(root_xml: bytes, attachments: Mapping[str, bytes]) -> bytes:
    """Replace every ``xop:Include`` by the base64 text of the part it names (the XOP infoset)."""
    try:
        root = parse_xml(root_xml)
    except XMLRejected as exc:
        raise MTOMError(f"the root MIME part is not acceptable XML: {exc.reason}") from None
    includes = list(root.iter(XOP_INCLUDE))
    for include in includes:
        href = include.get("href") or ""
        try:
            data = lookup_attachment(attachments, href)
        except KeyError:
            raise MTOMError(f"xop:Include href {href!r} names no MIME part of the message") from None
        parent = include.getparent()
        parent.remove(include)
        parent.text = base64.b64encode(data).decode("ascii")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def unpack_mtom_bytes(content_type: str, body: bytes) -> tuple[bytes, dict[str, bytes]]:
    """Unpack an MTOM/XOP message held in memory into (root XML, attachments by Content-ID).

    Contract with :mod:`ihe.http`: the returned XML is the XOP *infoset*: each ``xop:Include``
    is replaced by the base64 text of the part it references, so handlers read documents the
    same way whether they came inline or as attachments. The decoded attachments are also
    returned by bare Content-ID for handlers that prefer the raw bytes. The root part is the
    one named by the ``start`` parameter, else the first. Raises :class:`MTOMError`.
    """
    parts, params = split_parts(content_type, body)
    root_i = _root_index(parts, params.get("start"))
    root_xml = b"".join(parts[root_i].chunks)
    attachments: dict[str, bytes] = {}
    for i, part in enumerate(parts):
        if i == root_i or not part.content_id:
            continue
        if part.content_id in attachments:
            raise MTOMError(f"two MIME parts have the Content-ID <{part.content_id}>")
        attachments[part.content_id] = b"".join(part.chunks)
    if attachments and b"Include" in root_xml:
        root_xml = inline_xop(root_xml, attachments)
    return root_xml, attachments


# --- reading: streaming ------------------------------------------------------------------------------


class AttachmentSink(Protocol):
    """Where :func:`read_mtom_stream` writes one attachment (a temp file, a buffer, ...)."""

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def discard(self) -> None: ...


class HashingFileWriter:
    """Write a stream to a new file while hashing it; big streams get a writer thread.

    The first ``THREAD_AFTER`` bytes are hashed and written inline (small documents pay no
    thread). Beyond that a worker thread hashes and writes (both release the GIL) while the
    event loop goes on receiving: on two cores this nearly doubles what one stream gets. The
    queue holds at most ``QUEUE_CHUNKS`` chunks; when the disk is behind, ``write`` waits,
    which is the backpressure. A failure in the thread (disk full) is raised by the next call.
    """

    THREAD_AFTER = 1024 * 1024
    QUEUE_CHUNKS = 4

    def __init__(self, path: Path, algorithms: Sequence[str] = ("sha1",)) -> None:
        self.path = path
        self._fh: BinaryIO | None = open(path, "xb")  # noqa: SIM115 - closed by finish/abort
        self._hashes = {a: hashlib.new(a, usedforsecurity=False) for a in algorithms}
        self.size = 0
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _consume(self, data: bytes | memoryview) -> None:
        for h in self._hashes.values():
            h.update(data)
        assert self._fh is not None
        self._fh.write(data)

    def _run(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._consume(item)
                except BaseException as exc:  # reported to the caller by the next write/finish
                    self._error = exc

    def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self._thread is None:
            if self.size <= self.THREAD_AFTER:
                self._consume(data)
                return
            self._queue = queue.Queue(self.QUEUE_CHUNKS)
            self._thread = threading.Thread(target=self._run, name=f"write {self.path.name}", daemon=True)
            self._thread.start()
        if self._error is not None:
            raise self._error
        self._queue.put(data)  # type: ignore[union-attr]

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)  # type: ignore[union-attr]
            self._thread.join()
            self._thread = None

    def finish(self) -> dict[str, str]:
        """Wait for the writes, flush; return the hex digests by algorithm. The file stays open."""
        self._stop()
        if self._error is not None:
            raise self._error
        assert self._fh is not None
        self._fh.flush()
        return {a: h.hexdigest() for a, h in self._hashes.items()}

    def fileno(self) -> int:
        assert self._fh is not None
        return self._fh.fileno()

    def close(self) -> None:
        self._stop()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @property
    def closed(self) -> bool:
        return self._fh is None


class MemorySink:
    """An attachment kept in memory (small messages, tests)."""

    def __init__(self, content_id: str = "", headers: Mapping[str, str] | None = None) -> None:
        self.content_id = content_id
        self.headers = dict(headers or {})
        self._chunks: list[bytes] = []
        self.data = b""

    def write(self, data: bytes) -> None:
        self._chunks.append(data)

    def finish(self) -> None:
        self.data = b"".join(self._chunks)
        self._chunks = []

    def discard(self) -> None:
        self._chunks = []
        self.data = b""


class _NullSink:
    def write(self, data: bytes) -> None:
        pass

    def finish(self) -> None:
        pass

    def discard(self) -> None:
        pass


@dataclass(slots=True)
class MTOMMessage:
    """A streamed MTOM message: the root part in memory, every other part in its sink."""

    root: bytes
    root_headers: dict[str, str]
    attachments: dict[str, Any]  # bare Content-ID -> the finished sink
    params: dict[str, str]

    def discard(self) -> None:
        for sink in self.attachments.values():
            sink.discard()


SinkFactory = Callable[[str, dict[str, str]], AttachmentSink]


async def read_mtom_stream(
    content_type: str,
    chunks: AsyncIterable[bytes],
    open_sink: SinkFactory,
    *,
    max_root_bytes: int = DEFAULT_MAX_ROOT_BYTES,
    max_total_bytes: int | None = None,
) -> MTOMMessage:
    """Read an MTOM message from ``chunks``: root part into memory, attachments into sinks.

    ``open_sink(content_id, headers)`` is called as each non-root part begins; its data is
    written as it arrives, so memory stays bounded whatever the document sizes. The root is
    the part named by ``start``, else the first. On any error every sink opened so far is
    discarded and :class:`MTOMError` (or the sink's own exception) propagates.
    """
    boundary, params = multipart_boundary(content_type)
    start = bare_content_id(params.get("start")) if params.get("start") else None
    parser = MultipartParser(boundary)
    sinks: dict[str, Any] = {}
    opened: list[AttachmentSink] = []
    root: bytearray | None = None
    root_headers: dict[str, str] = {}
    in_root = False
    sink: AttachmentSink = _NullSink()
    decoder: _Identity | _Base64Decoder = _Identity()
    total = 0
    try:
        async for chunk in chunks:
            total += len(chunk)
            if max_total_bytes is not None and total > max_total_bytes:
                raise MTOMError(f"the message exceeds the limit of {max_total_bytes} bytes")
            for event in parser.feed(chunk):
                if isinstance(event, PartData):
                    data = decoder.feed(event.data)
                    if in_root:
                        root += data
                        if len(root) > max_root_bytes:
                            raise MTOMError(f"the root (SOAP) part exceeds the limit of {max_root_bytes} bytes")
                    elif data:
                        sink.write(data)
                elif isinstance(event, PartHeaders):
                    decoder = _decoder(event.headers)
                    cid = bare_content_id(event.headers.get("content-id"))
                    is_root = root is None and (cid == start if start else True)
                    if is_root:
                        root, root_headers, in_root = bytearray(), event.headers, True
                    elif not cid:
                        sink, in_root = _NullSink(), False  # cannot be referenced: skip it
                    else:
                        if cid in sinks:
                            raise MTOMError(f"two MIME parts have the Content-ID <{cid}>")
                        sink, in_root = open_sink(cid, event.headers), False
                        opened.append(sink)
                        sinks[cid] = sink
                else:
                    tail = decoder.flush()
                    if in_root:
                        root += tail
                    else:
                        if tail:
                            sink.write(tail)
                        sink.finish()
        parser.close()
        if root is None:
            raise MTOMError(f"no MIME part has the Content-ID <{start}> named by the start parameter")
    except BaseException:
        for s in opened:
            s.discard()
        raise
    return MTOMMessage(bytes(root), root_headers, sinks, params)


async def iterate_bytes(data: bytes, chunk_size: int = READ_CHUNK) -> AsyncIterator[bytes]:
    """``data`` as an async stream of chunks (tests, small messages)."""
    for i in range(0, len(data), chunk_size):
        yield data[i : i + chunk_size]


# --- writing ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attachment:
    """One MTOM attachment: bytes in memory, or a file streamed at write time.

    ``opener`` lets a non-filesystem store (S3) supply the stream; ``size`` must then be given.
    """

    content_id: str
    content_type: str = "application/octet-stream"
    data: bytes | None = None
    path: Path | None = None
    opener: Callable[[], BinaryIO] | None = None
    size: int | None = None

    def length(self) -> int:
        if self.data is not None:
            return len(self.data)
        if self.size is not None:
            return self.size
        if self.path is not None:
            return self.path.stat().st_size
        raise ValueError(f"attachment <{self.content_id}> needs a size")

    def open(self) -> BinaryIO:
        if self.opener is not None:
            return self.opener()
        if self.path is not None:
            return open(self.path, "rb")
        raise ValueError(f"attachment <{self.content_id}> has no content")


def xop_include(parent: etree._Element, content_id: str) -> etree._Element:
    """Append ``<xop:Include href="cid:..."/>`` to ``parent`` (which then has no text)."""
    parent.text = None
    return etree.SubElement(parent, XOP_INCLUDE, nsmap={"xop": XOP}, href=href_for(content_id))


@dataclass(slots=True)
class MTOMPackage:
    """An MTOM message ready to send: its headers and a generator of its bytes."""

    content_type: str
    content_length: int
    segments: list[bytes | Attachment]  # MIME framing as bytes, attachments to stream between them

    def iter_chunks(self, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """The message bytes; file attachments are read ``chunk_size`` at a time."""
        for seg in self.segments:
            if isinstance(seg, bytes):
                yield seg
            elif seg.data is not None:
                yield seg.data
            else:
                remaining = seg.length()
                with seg.open() as fh:
                    while remaining > 0:
                        block = fh.read(min(chunk_size, remaining))
                        if not block:
                            raise OSError(f"attachment <{seg.content_id}> is shorter than its size")
                        remaining -= len(block)
                        yield block

    async def aiter_chunks(self, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        for block in self.iter_chunks(chunk_size):
            yield block

    def to_bytes(self) -> bytes:
        return b"".join(self.iter_chunks())


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_header_value(value: str, forbidden: str = "") -> None:
    """Refuse a value that would break out of its MIME header (CR/LF) or of its quotes or brackets.

    Attachment content types come from document metadata a source sent: a mimeType with a line
    break must never add headers or parts to an answer another consumer reads.
    """
    if _CONTROL.search(value) or any(c in value for c in forbidden):
        raise ValueError(f"{value!r} cannot be written into a MIME header (control character or one of "
                         f"{forbidden!r})")


def build_mtom(
    root_xml: bytes,
    attachments: Sequence[Attachment] = (),
    *,
    action: str | None = None,
    boundary: str | None = None,
    root_content_id: str | None = None,
) -> MTOMPackage:
    """Package a SOAP 1.2 envelope and its attachments as MTOM/XOP.

    The root is ``application/xop+xml; type="application/soap+xml"`` and is named by the
    ``start`` parameter; each attachment is a binary part. Sizes are known up front, so the
    message has a Content-Length and nothing is buffered beyond one chunk.
    """
    boundary = boundary or f"MIMEBoundary_{uuid.uuid4().hex}"
    root_cid = root_content_id or new_content_id()
    for quoted in (boundary, action or ""):
        _check_header_value(quoted, '"')
    for att in attachments:
        _check_header_value(att.content_id, "<>")
        _check_header_value(att.content_type)
    _check_header_value(root_cid, "<>")
    action_param = f'; action="{action}"' if action else ""
    content_type = (
        f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; start="<{root_cid}>"; '
        f'start-info="application/soap+xml"{action_param}'
    )
    dash = f"--{boundary}".encode("latin-1")
    segments: list[bytes | Attachment] = [
        dash + b"\r\n"
        + (f'Content-Type: application/xop+xml; charset=UTF-8; type="application/soap+xml"{action_param}\r\n'
           f"Content-Transfer-Encoding: binary\r\nContent-ID: <{root_cid}>\r\n\r\n").encode("latin-1"),
        root_xml,
    ]
    for att in attachments:
        segments.append(
            b"\r\n" + dash + b"\r\n"
            + (f"Content-Type: {att.content_type}\r\nContent-Transfer-Encoding: binary\r\n"
               f"Content-ID: <{att.content_id}>\r\n\r\n").encode("latin-1")
        )
        segments.append(att)
    segments.append(b"\r\n" + dash + b"--\r\n")
    length = sum(len(s) if isinstance(s, bytes) else s.length() for s in segments)
    return MTOMPackage(content_type, length, segments)


async def send_mtom_response(request: Any, package: MTOMPackage, *, status: int = 200) -> Any:
    """Stream ``package`` as the answer to an aiohttp ``request``, with its Content-Length.

    File-backed attachments go out with sendfile(2): the kernel copies page cache to the
    socket, so neither memory nor Python touch the document bytes (the retrieve path of
    repositories and imaging sources). Others are written chunk by chunk. A file shorter than
    its announced size breaks the connection rather than sending a wrong document.
    """
    import asyncio

    from aiohttp import web

    response = web.StreamResponse(status=status, headers={"Content-Type": package.content_type})
    response.content_length = package.content_length
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    sendfile_ok = True
    for segment in package.segments:
        if isinstance(segment, bytes):
            await response.write(segment)
        elif segment.data is not None:
            await response.write(segment.data)
        elif segment.path is not None and segment.opener is None and sendfile_ok:
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("the client went away")
            size = segment.length()
            with open(segment.path, "rb") as fh:
                try:
                    sent = await loop.sendfile(transport, fh, 0, size)
                except NotImplementedError:  # an event loop without sendfile (e.g. uvloop)
                    sendfile_ok = False
                    await _write_file(response, segment)
                    sent = size
            if sent != size:
                raise OSError(f"attachment <{segment.content_id}> ({segment.path}) is shorter than its size")
        else:
            await _write_file(response, segment)
    await response.write_eof()
    return response


async def _write_file(response: Any, segment: Attachment) -> None:
    remaining = segment.length()
    with segment.open() as fh:
        while remaining > 0:
            block = fh.read(min(1024 * 1024, remaining))
            if not block:
                raise OSError(f"attachment <{segment.content_id}> is shorter than its size")
            remaining -= len(block)
            await response.write(block)


async def body_chunks(stream: Any) -> AsyncIterator[bytes]:
    """The chunks of an aiohttp body stream (``request.content``/``response.content``) as received.

    ``readchunk`` hands over each received buffer as is, where ``iter_any`` joins what has
    piled up (one more copy of every byte of a large document).
    """
    while True:
        data, end_of_http_chunk = await stream.readchunk()
        if data:
            yield data
        elif not end_of_http_chunk:
            return
