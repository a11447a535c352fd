"""The asyncio DICOM upper layer (ihe.dicom_ul) under the Storage SCP: what it packs by hand is byte-identical
to pynetdicom's encoders, and a raw peer (PDUs built with pynetdicom's codecs) sees the standard answers to
bad associations, mismatched requests, aborts mid-dataset and silence."""

from __future__ import annotations

import asyncio
import glob
import io
import struct
import uuid
from pathlib import Path

import pydicom
import pytest
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dimse_messages import C_ECHO_RQ, C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta, decode, encode, encode_file_meta
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from ihe.dicom_ul import Acceptor, AcceptorConfig, p_data, response_command
from imaging_source.ingest import describe, prepare, read_dataset_header
from imaging_source.storage_scp import part10_head, supported_contexts

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.mark.parametrize(("status", "comment", "max_pdu"), [(0, None, 16384), (0xA700, "not stored: disk full", 16384),
                                                             (0xA900, "a reason", 40)])
def test_store_response_is_what_pynetdicom_encodes(status, comment, max_pdu):
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = CT_STORAGE
    primitive.AffectedSOPInstanceUID = "1.2.3.45"
    primitive.Status = status
    if comment:
        primitive.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    expected = b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(3, max_pdu))
    assert p_data(3, response_command(0x0001, 7, CT_STORAGE, "1.2.3.45", status, comment), max_pdu,
                  command=True) == expected


def test_echo_response_is_what_pynetdicom_encodes():
    primitive = C_ECHO()
    primitive.MessageIDBeingRespondedTo = 2
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    primitive.Status = 0
    message = C_ECHO_RSP()
    message.primitive_to_message(primitive)
    expected = b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(1, 16384))
    assert p_data(1, response_command(0x0030, 2, "1.2.840.10008.1.1", None, 0, None), 16384, command=True) == expected


@pytest.mark.parametrize("ts", [EXPLICIT_LE, "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.90"])
def test_file_meta_is_what_pynetdicom_writes(ts):
    meta = create_file_meta(sop_class_uid=CT_STORAGE, sop_instance_uid="1.2.3.4.5", transfer_syntax=ts,
                            implementation_uid=PYNETDICOM_IMPLEMENTATION_UID,
                            implementation_version=PYNETDICOM_IMPLEMENTATION_VERSION)
    assert part10_head(CT_STORAGE, "1.2.3.4.5", ts) == b"\x00" * 128 + b"DICM" + encode_file_meta(meta)


def test_the_index_facts_from_the_header_alone_are_those_of_the_whole_file():
    """Every pydicom test file the index accepts: reading only the needed elements of the dataset gives the
    same facts as reading the whole Part 10 file."""
    files = sorted(glob.glob(str(Path(pydicom.__file__).parent / "data" / "test_files" / "*.dcm")))
    compared = 0
    for path in files:
        data = Path(path).read_bytes()
        try:
            expected, _ = prepare(data)
            fp = io.BytesIO(data)
            pydicom.filereader.read_preamble(fp, False)
            pydicom.filereader._read_file_meta_info(fp)
        except Exception:
            continue  # not a file the index takes
        ds, _ = read_dataset_header(io.BytesIO(data[fp.tell():]), expected.transfer_syntax_uid)
        assert describe(ds, expected.transfer_syntax_uid) == expected, path
        compared += 1
    assert compared >= 20, f"only {compared} test files compared"


class RawSCU:
    """A peer speaking PDUs built with pynetdicom's codecs, over a plain asyncio connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> RawSCU:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def pdu(self) -> tuple[int, bytes]:
        header = await asyncio.wait_for(self.reader.readexactly(6), 10)
        kind, _, length = struct.unpack(">BBI", header)
        return kind, header + await self.reader.readexactly(length)

    async def associate(self, contexts, application_context: str = "1.2.840.10008.3.1.1.1") -> tuple[int, bytes]:
        request = A_ASSOCIATE()
        request.application_context_name = application_context
        request.calling_ae_title, request.called_ae_title = "RAW_SCU", "XDSI_TEST"
        for n, cx in enumerate(contexts):
            cx.context_id = 2 * n + 1
        request.presentation_context_definition_list = contexts
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = 16384
        request.user_information = [max_length]
        self.writer.write(A_ASSOCIATE_RQ(request).encode())
        return await self.pdu()

    def send(self, message, context_id: int = 1) -> None:
        for primitive in message.encode_msg(context_id, 16384):
            self.writer.write(P_DATA_TF(primitive).encode())

    async def response(self):
        kind, pdu = await self.pdu()
        assert kind == 4, f"PDU type {kind}"
        return decode(io.BytesIO(pdu[12:]), True, True)

    def close(self) -> None:
        self.writer.close()


def store_request(ds: pydicom.Dataset, affected_uid: str | None = None) -> C_STORE_RQ:
    primitive = C_STORE()
    primitive.MessageID = 5
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = affected_uid or ds.SOPInstanceUID
    primitive.Priority = 2
    primitive.DataSet = io.BytesIO(encode(ds, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return message


async def test_an_unknown_application_context_is_rejected(imaging_source):
    scu = await RawSCU.connect(imaging_source.dicom_port)
    kind, pdu = await scu.associate([build_context(CT_STORAGE, EXPLICIT_LE)], application_context="1.2.3.4")
    scu.close()
    assert kind == 3
    rj = A_ASSOCIATE_RJ()
    rj.decode(pdu)
    assert (rj.result, rj.source, rj.reason_diagnostic) == (1, 1, 2)


async def test_mismatch_abort_and_echo_on_raw_associations(imaging_source, samples):
    """A C-STORE whose Affected SOP Instance UID is not the dataset's: A900 with a reason. An association
    aborted in the middle of a dataset leaves no temporary file; the SCP answers the next association."""
    ds = pydicom.dcmread(samples["CT"])
    ds.SOPInstanceUID = f"1.2.826.0.1.93.{uuid.uuid4().int % 10**20}"
    scu = await RawSCU.connect(imaging_source.dicom_port)
    kind, pdu = await scu.associate([build_context(CT_STORAGE, EXPLICIT_LE)])
    assert kind == 2
    ac = A_ASSOCIATE_AC()
    ac.decode(pdu)
    assert [cx.result for cx in ac.presentation_context] == [0]
    scu.send(store_request(ds, affected_uid="1.2.826.0.1.93.1"))
    response = await scu.response()
    assert response.Status == 0xA900 and "SOP Instance UID" in response.ErrorComment

    # the command and half the dataset, then A-ABORT
    encoded = encode(ds, False, True)
    request = store_request(ds)
    request.data_set = None
    scu.send(request)
    half = encoded[: len(encoded) // 2]
    scu.writer.write(struct.pack(">BBIIBB", 4, 0, len(half) + 6, len(half) + 2, 1, 0) + half)
    scu.writer.write(struct.pack(">BBIBBBB", 7, 0, 4, 0, 0, 0, 0))
    await scu.writer.drain()
    scu.close()

    scu = await RawSCU.connect(imaging_source.dicom_port)
    kind, _ = await scu.associate([build_context("1.2.840.10008.1.1")])
    assert kind == 2
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    scu.send(message)
    assert (await scu.response()).Status == 0
    scu.writer.write(struct.pack(">BBII", 5, 0, 4, 0))  # A-RELEASE-RQ
    assert (await scu.pdu())[0] == 6
    scu.close()
    for _ in range(50):  # the aborted association's coroutine ends on its own schedule
        if not list(Path(imaging_source.storage_dir).glob(".incoming-*")):
            break
        await asyncio.sleep(0.1)
    assert list(Path(imaging_source.storage_dir).glob(".incoming-*")) == []
    assert not list(Path(imaging_source.storage_dir).rglob(f"{ds.SOPInstanceUID}*"))


class _Nothing:
    def store(self, assoc, command, context):
        raise AssertionError("no C-STORE expected")

    def ended(self, assoc, released):
        pass


async def test_silence_after_connecting_is_cut_off_and_the_association_limit_holds():
    acceptor = Acceptor(AcceptorConfig("LIMITS", supported_contexts(), artim_timeout=0.5, max_associations=1),
                        _Nothing())
    server = await acceptor.start("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        silent = await RawSCU.connect(port)
        assert await asyncio.wait_for(silent.reader.read(), 5) == b""  # ARTIM: closed without a word
        silent.close()

        first = await RawSCU.connect(port)
        assert (await first.associate([build_context("1.2.840.10008.1.1")]))[0] == 2
        second = await RawSCU.connect(port)
        kind, pdu = await second.associate([build_context("1.2.840.10008.1.1")])
        assert kind == 3
        rj = A_ASSOCIATE_RJ()
        rj.decode(pdu)
        assert (rj.result, rj.source, rj.reason_diagnostic) == (2, 3, 2)  # transient, local limit exceeded
        first.close()
        second.close()
    finally:
        await acceptor.stop(server)
