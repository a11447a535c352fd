"""MTOM/XOP: parsing (in memory and streamed, any slicing of the input) and building."""

from __future__ import annotations

import base64
import random
from typing import ClassVar

import pytest
from lxml import etree

from ihe import mtom
from ihe.mtom import (
    Attachment,
    MemorySink,
    MTOMError,
    MultipartParser,
    PartData,
    PartEnd,
    PartHeaders,
    bare_content_id,
    build_mtom,
    cid_from_href,
    href_for,
    iterate_bytes,
    parse_content_type,
    read_mtom_stream,
    unpack_mtom_bytes,
)
from tests.shared import reference_dir

SHARED_MESSAGES = reference_dir("messages")
XOP_NS = "http://www.w3.org/2004/08/xop/include"

ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://www.w3.org/2005/08/addressing">'
    "<s:Header><a:Action>urn:test</a:Action></s:Header><s:Body>"
    '<x:Doc xmlns:x="urn:x">{inner}</x:Doc></s:Body></s:Envelope>'
)


def _envelope_with_include(href: str) -> bytes:
    return ENVELOPE.format(inner=f'<xop:Include xmlns:xop="{XOP_NS}" href="{href}"/>').encode()


def _multipart(parts: list[tuple[dict[str, str], bytes]], boundary: str, *, nl: bytes = b"\r\n",
               preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = [preamble]
    for headers, body in parts:
        out.append(b"--" + boundary.encode() + nl)
        for k, v in headers.items():
            out.append(f"{k}: {v}".encode() + nl)
        out.append(nl + body + nl)
    out.append(b"--" + boundary.encode() + b"--" + nl + epilogue)
    return b"".join(out)


BINARY = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n\n--MIMEBoundar" + b"\x00\r\n"


def _axis2_like(*, nl: bytes = b"\r\n", brackets: bool = True, href_cid: str | None = None) -> tuple[str, bytes]:
    boundary = "MIMEBoundary_95b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d"
    cid = "1.b5b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d@apache.org"
    root_cid = "0.85b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d@apache.org"
    wrap = (lambda c: f"<{c}>") if brackets else (lambda c: c)
    body = _multipart([
        ({"Content-Type": 'application/xop+xml; charset=UTF-8; type="application/soap+xml"',
          "Content-Transfer-Encoding": "binary", "Content-ID": wrap(root_cid)},
         _envelope_with_include(f"cid:{href_cid or cid}")),
        ({"Content-Type": "application/pdf", "Content-Transfer-Encoding": "binary", "Content-ID": wrap(cid)}, BINARY),
    ], boundary, nl=nl)
    ct = (f'multipart/related; boundary={boundary}; type="application/xop+xml"; start="<{root_cid}>"; '
          'start-info="application/soap+xml"')
    return ct, body


def _dotnet_like() -> tuple[str, bytes]:
    boundary = "uuid:376733a6-6a2d-4583-a687-04c08acf6a49+id=17"
    body = _multipart([
        ({"Content-ID": "<http://tempuri.org/0>", "Content-Transfer-Encoding": "8bit",
          "Content-Type": 'application/xop+xml;charset=utf-8;type="application/soap+xml"'},
         _envelope_with_include("cid:http%3A%2F%2Ftempuri.org%2F1%2F637245")),
        ({"Content-ID": "<http://tempuri.org/1/637245>", "Content-Transfer-Encoding": "binary",
          "Content-Type": "application/octet-stream"}, BINARY),
    ], boundary, preamble=b"\r\n")
    ct = (f'multipart/related; type="application/xop+xml"; start="<http://tempuri.org/0>"; boundary="{boundary}"; '
          'start-info="application/soap+xml"')
    return ct, body


def _included_text(root_xml: bytes) -> str:
    return etree.fromstring(root_xml).find(".//{urn:x}Doc").text


# --- header values -------------------------------------------------------------------------------


def test_content_type_parameters_quoted_with_semicolons_and_case():
    media, params = parse_content_type(
        'Multipart/Related; type="application/xop+xml";boundary="uuid:1;+id=17";  start="<a@b>"; '
        'start-info="application/soap+xml"; action="urn:ihe:iti:2007:RetrieveDocumentSet"'
    )
    assert media == "multipart/related"
    assert params["boundary"] == "uuid:1;+id=17"
    assert params["start"] == "<a@b>"
    assert params["action"] == "urn:ihe:iti:2007:RetrieveDocumentSet"
    assert parse_content_type("multipart/related; boundary=abc")[1] == {"boundary": "abc"}


def test_content_ids_and_cid_hrefs():
    assert bare_content_id(" <a.b@c> ") == "a.b@c"
    assert bare_content_id("a.b@c") == "a.b@c"
    assert cid_from_href("cid:fdf975cc-1@urn%3Aihe%3Aiti%3Axds-b%3A2007") == "fdf975cc-1@urn:ihe:iti:xds-b:2007"
    assert cid_from_href("CID:x%40y") == "x@y"
    with pytest.raises(MTOMError):
        cid_from_href("http://example.org/doc")
    cid = "http://tempuri.org/1/6 37@x"
    assert cid_from_href(href_for(cid)) == cid


# --- in-memory unpacking -----------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["axis2", "lf-only", "no-brackets", "percent-encoded", "dotnet"])
def test_unpack_variants_inline_the_attachment(variant):
    if variant == "axis2":
        ct, body = _axis2_like()
    elif variant == "lf-only":
        ct, body = _axis2_like(nl=b"\n")
    elif variant == "no-brackets":
        ct, body = _axis2_like(brackets=False)
    elif variant == "percent-encoded":
        ct, body = _axis2_like(href_cid="1.b5b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d%40apache.org")
    else:
        ct, body = _dotnet_like()
    root_xml, attachments = unpack_mtom_bytes(ct, body)
    assert list(attachments.values()) == [BINARY]
    assert base64.b64decode(_included_text(root_xml)) == BINARY
    assert b"Include" not in root_xml


def test_unpack_root_named_by_start_need_not_be_first():
    boundary = "b1"
    body = _multipart([
        ({"Content-ID": "<att@x>", "Content-Type": "text/plain"}, b"attached"),
        ({"Content-ID": "<root@x>", "Content-Type": "application/xop+xml"}, _envelope_with_include("cid:att@x")),
    ], boundary)
    root_xml, attachments = unpack_mtom_bytes(f'multipart/related; boundary={boundary}; start="<root@x>"', body)
    assert attachments == {"att@x": b"attached"}
    assert base64.b64decode(_included_text(root_xml)) == b"attached"


def test_unpack_without_attachments_returns_the_root_unchanged():
    xml = ENVELOPE.format(inner="aGVsbG8=").encode()
    root_xml, attachments = unpack_mtom_bytes("multipart/related; boundary=zz",
                                              _multipart([({"Content-ID": "<r@x>"}, xml)], "zz"))
    assert root_xml == xml and attachments == {}


def test_base64_transfer_encoded_part_is_decoded():
    encoded = base64.encodebytes(BINARY)  # line-wrapped
    body = _multipart([
        ({"Content-ID": "<r@x>"}, _envelope_with_include("cid:a@x")),
        ({"Content-ID": "<a@x>", "Content-Transfer-Encoding": "base64"}, encoded),
    ], "bb")
    _, attachments = unpack_mtom_bytes("multipart/related; boundary=bb", body)
    assert attachments["a@x"] == BINARY


@pytest.mark.needs_shared("messages")
@pytest.mark.parametrize("name", ["iti41-Xop.txt", "iti41-encodedURL.txt", "iti41-NoXop.txt", "iti41-dicom.txt"])
def test_reference_messages(name):
    path = SHARED_MESSAGES / name
    assert path.is_file(), f"reference message {path} is missing from the shared folder"
    body = path.read_bytes()
    first = body.lstrip(b"\r\n").split(b"\n", 1)[0].rstrip(b"\r")
    boundary = first[2:].decode()
    root_xml, attachments = unpack_mtom_bytes(f'multipart/related; boundary="{boundary}"; type="application/xop+xml"',
                                              body)
    doc = etree.fromstring(root_xml).find(".//{urn:ihe:iti:xds-b:2007}Document")
    content = base64.b64decode(doc.text)
    if name in ("iti41-Xop.txt", "iti41-encodedURL.txt"):
        assert list(attachments.values()) == [b"This is my document.\n\nIt is great!\n\n"]
        assert content == b"This is my document.\n\nIt is great!\n\n"
    elif name == "iti41-NoXop.txt":
        assert attachments == {}
        assert content == b"This is my document.\r\n\r\nIt is great!\r\n"
    else:
        assert attachments == {}
        assert content[128:132] == b"DICM"  # a DICOM Part 10 file, inline


@pytest.mark.parametrize("build", [_axis2_like, _dotnet_like, lambda: _axis2_like(nl=b"\n")])
def test_any_slicing_of_the_input_gives_the_same_events(build):
    ct, body = build()
    boundary = mtom.multipart_boundary(ct)[0]

    def parse(cuts: list[int]) -> list[tuple[dict, bytes]]:
        parser = MultipartParser(boundary)
        parts: list[tuple[dict, bytearray]] = []
        prev = 0
        for cut in [*cuts, len(body)]:
            for ev in parser.feed(body[prev:cut]):
                if isinstance(ev, PartHeaders):
                    parts.append((ev.headers, bytearray()))
                elif isinstance(ev, PartData):
                    parts[-1][1].extend(ev.data)
                else:
                    assert isinstance(ev, PartEnd)
            prev = cut
        parser.close()
        return [(h, bytes(b)) for h, b in parts]

    whole = parse([])
    assert len(whole) == 2 and whole[1][1] == BINARY
    rng = random.Random(41)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 40)))
        assert parse(cuts) == whole
    assert parse(list(range(1, len(body)))) == whole  # one byte at a time


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("multipart/related", b"--x\r\n\r\nabc\r\n--x--", "no boundary"),
        ("application/soap+xml", b"<a/>", "not multipart/related"),
        ("multipart/related; boundary=x", b"--x\r\nContent-ID: <r@x>\r\n\r\n<a/>\r\n", "truncated"),
        ("multipart/related; boundary=x", b"no delimiter at all", "truncated"),
        ("multipart/related; boundary=x", b"--x\r\nContent-ID: <r@x>\r\n\r\n<a/>\r\n--xyz\r\n", "followed by"),
        ("multipart/related; boundary=x", b"--x\r\nbroken header line\r\n\r\n<a/>\r\n--x--", "header"),
        ("multipart/related; boundary=x", b"--x--\r\n", "no parts"),
        ("multipart/related; boundary=x; start=\"<nope>\"", b"--x\r\nContent-ID: <r@x>\r\n\r\n<a/>\r\n--x--",
         "start parameter"),
        ("multipart/related; boundary=x",
         b"--x\r\nContent-ID: <r>\r\n\r\n<a/>\r\n--x\r\nContent-ID: <d>\r\n\r\n1\r\n--x\r\nContent-ID: <d>\r\n\r\n2"
         b"\r\n--x--", "two MIME parts"),
        ("multipart/related; boundary=x",
         b"--x\r\nContent-ID: <r>\r\n\r\n<a/>\r\n--x\r\nContent-ID: <d>\r\nContent-Transfer-Encoding: "
         b"quoted-printable\r\n\r\n1\r\n--x--", "Content-Transfer-Encoding"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(content_type, body, message):
    with pytest.raises(MTOMError, match=message):
        unpack_mtom_bytes(content_type, body)


def test_a_boundary_that_cannot_be_in_the_body_is_refused():
    with pytest.raises(MTOMError, match="ISO-8859-1"):
        unpack_mtom_bytes('multipart/related; boundary="a\u20acb"', "--a\u20acb\r\n\r\n<a/>\r\n--a\u20acb--".encode())


def test_percent_encoded_content_id_header_is_found_by_its_href():
    # Some sources put the href's encoded form in the Content-ID header too.
    body = _multipart([({"Content-ID": "<r@x>"}, _envelope_with_include("cid:doc%2F1@x")),
                       ({"Content-ID": "<doc%2F1@x>"}, b"data")], "bb")
    root_xml, attachments = unpack_mtom_bytes("multipart/related; boundary=bb", body)
    assert attachments == {"doc%2F1@x": b"data"}
    assert base64.b64decode(_included_text(root_xml)) == b"data"
    with pytest.raises(KeyError):
        mtom.lookup_attachment(attachments, "cid:other@x")


def test_include_of_a_missing_part_is_refused():
    body = _multipart([({"Content-ID": "<r@x>"}, _envelope_with_include("cid:missing@x")),
                       ({"Content-ID": "<other@x>"}, b"data")], "bb")
    with pytest.raises(MTOMError, match="names no MIME part"):
        unpack_mtom_bytes("multipart/related; boundary=bb", body)


def test_oversized_part_headers_are_refused():
    body = b"--x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n<a/>\r\n--x--"
    with pytest.raises(MTOMError, match="headers exceed"):
        unpack_mtom_bytes("multipart/related; boundary=x", body)


# --- streaming ------------------------------------------------------------------------------------


class RecordingSink(MemorySink):
    opened: ClassVar[list[RecordingSink]] = []

    def __init__(self, content_id, headers):
        super().__init__(content_id, headers)
        self.finished = self.discarded = False
        RecordingSink.opened.append(self)

    def finish(self):
        super().finish()
        self.finished = True

    def discard(self):
        super().discard()
        self.discarded = True


async def test_stream_keeps_root_in_memory_and_attachments_in_sinks():
    ct, body = _dotnet_like()
    message = await read_mtom_stream(ct, iterate_bytes(body, 7), RecordingSink)
    assert etree.fromstring(message.root).find(f".//{{{XOP_NS}}}Include") is not None  # left in place
    sink = message.attachments["http://tempuri.org/1/637245"]
    assert sink.finished and sink.data == BINARY
    assert mtom.lookup_attachment(message.attachments, "cid:http%3A%2F%2Ftempuri.org%2F1%2F637245") is sink
    assert message.root_headers["content-id"] == "<http://tempuri.org/0>"


@pytest.mark.parametrize(
    ("body_change", "limits", "message"),
    [
        (lambda b: b[:-30], {}, "truncated"),
        (lambda b: b, {"max_root_bytes": 100}, "root"),
        (lambda b: b, {"max_total_bytes": 1000}, "exceeds the limit"),
    ],
)
async def test_stream_errors_discard_every_sink(body_change, limits, message):
    ct, body = _axis2_like()
    RecordingSink.opened = []
    with pytest.raises(MTOMError, match=message):
        await read_mtom_stream(ct, iterate_bytes(body_change(body), 512), RecordingSink, **limits)
    assert all(s.discarded for s in RecordingSink.opened)


async def test_stream_propagates_a_sink_failure_after_discarding():
    ct, body = _axis2_like()

    class Full(RecordingSink):
        def write(self, data):
            raise OSError(28, "No space left on device")

    RecordingSink.opened = []
    with pytest.raises(OSError):
        await read_mtom_stream(ct, iterate_bytes(body), Full)
    assert RecordingSink.opened and all(s.discarded for s in RecordingSink.opened)


# --- building -------------------------------------------------------------------------------------


def test_build_round_trip_with_bytes_and_file(tmp_path):
    big = tmp_path / "doc.bin"
    big.write_bytes(BINARY * 100)
    envelope = ENVELOPE.format(inner="").encode()
    package = build_mtom(envelope, [Attachment("a@x", "text/plain", data=b"small"),
                                    Attachment("b@x", "application/dicom", path=big)], action="urn:act")
    data = b"".join(package.iter_chunks(chunk_size=1000))
    assert len(data) == package.content_length
    media, params = parse_content_type(package.content_type)
    assert media == "multipart/related" and params["type"] == "application/xop+xml"
    assert params["action"] == "urn:act" and params["start-info"] == "application/soap+xml"
    parts, _ = mtom.split_parts(package.content_type, data)
    assert parts[0].content_id == bare_content_id(params["start"])
    assert b"".join(parts[0].chunks) == envelope
    assert [(p.content_id, p.headers["content-type"], b"".join(p.chunks)) for p in parts[1:]] == [
        ("a@x", "text/plain", b"small"), ("b@x", "application/dicom", BINARY * 100)]


@pytest.mark.parametrize(
    ("attachment", "kwargs"),
    [
        (Attachment("a@x", "text/plain\r\nX-Injected: 1", data=b"x"), {}),  # a mimeType from metadata
        (Attachment("a@x>\r\n\r\n--b", data=b"x"), {}),
        (Attachment("a@x", data=b"x"), {"action": 'urn:a"; start="<evil>'}),
        (Attachment("a@x", data=b"x"), {"boundary": "b\r\n"}),
    ],
)
def test_build_refuses_values_that_would_break_the_mime_framing(attachment, kwargs):
    with pytest.raises(ValueError, match="cannot be written into a MIME header"):
        build_mtom(b"<a/>", [attachment], **kwargs)


def test_build_refuses_a_file_shorter_than_announced(tmp_path):
    f = tmp_path / "short"
    f.write_bytes(b"abc")
    package = build_mtom(b"<a/>", [Attachment("a@x", path=f, size=10)])
    with pytest.raises(OSError, match="shorter"):
        package.to_bytes()


def test_xop_include_element_round_trips_through_the_parser():
    parent = etree.Element("{urn:x}Document")
    parent.text = "old"
    mtom.xop_include(parent, "odd id/1@x")
    include = parent[0]
    assert parent.text is None and include.tag == f"{{{XOP_NS}}}Include"
    assert cid_from_href(include.get("href")) == "odd id/1@x"


# --- file sinks -----------------------------------------------------------------------------------


def test_hashing_file_writer_small_and_threaded(tmp_path):
    import hashlib

    for total in (1000, 5 * 1024 * 1024 + 7):  # inline only; then on the writer thread
        data = random.Random(total).randbytes(total)
        writer = mtom.HashingFileWriter(tmp_path / f"f{total}", ("sha1", "sha256"))
        for i in range(0, total, 100_000):
            writer.write(memoryview(data)[i : i + 100_000])
        digests = writer.finish()
        writer.close()
        assert digests == {"sha1": hashlib.sha1(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}
        assert writer.size == total and (tmp_path / f"f{total}").read_bytes() == data


def test_hashing_file_writer_reports_a_failure_of_its_thread(tmp_path):
    writer = mtom.HashingFileWriter(tmp_path / "f")
    writer.write(b"x" * (writer.THREAD_AFTER + 1))  # starts the thread

    class Full:
        def write(self, data):
            raise OSError(28, "No space left on device")

        def close(self):
            pass

    writer._fh = Full()
    with pytest.raises(OSError, match="No space"):
        for _ in range(100):
            writer.write(b"y" * 65536)
        writer.finish()
    writer.close()
    with pytest.raises(FileExistsError):  # never overwrites
        mtom.HashingFileWriter(tmp_path / "f")


async def test_send_mtom_response_streams_files_with_sendfile(tmp_path):
    await _serve_and_fetch(tmp_path)


def test_send_mtom_response_on_uvloop_which_has_no_sendfile(tmp_path):
    import uvloop

    uvloop.run(_serve_and_fetch(tmp_path))


async def _serve_and_fetch(tmp_path):
    import aiohttp
    from aiohttp import web

    blob = tmp_path / "blob"
    blob.write_bytes(BINARY * 50)
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    envelope = ENVELOPE.format(inner="").encode()

    async def handler(request):
        attachments = [Attachment("mem@x", "text/plain", data=b"in memory"),
                       Attachment("file@x", "application/dicom", path=blob)]
        if request.query.get("short"):
            attachments.append(Attachment("short@x", path=short, size=1000))
        return await mtom.send_mtom_response(request, build_mtom(envelope, attachments))

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                body = await response.read()
                assert len(body) == response.content_length
                content_type = response.headers["Content-Type"]
            root_xml, attachments = unpack_mtom_bytes(content_type, body)
            assert root_xml == envelope
            assert attachments == {"mem@x": b"in memory", "file@x": BINARY * 50}
            with pytest.raises(aiohttp.ClientPayloadError):  # never a complete-looking wrong message
                async with session.get(f"http://127.0.0.1:{port}/?short=1") as response:
                    await response.read()
    finally:
        await runner.cleanup()
