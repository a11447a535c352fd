"""ITI-8 patient identity feed: ADT parsing and ACKs (pure), then over a real MLLP socket."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from xml.sax.saxutils import escape

import hl7
import pytest
from hl7.mllp import open_hl7_connection

from ihe.hl7 import HL7Error, build_ack, get, parse_message
from ihe.metadata import vocabulary as v
from ihe.metadata.model import Identifiable
from registry.app import Registry, open_registry
from registry.patient_feed import MergePatients, RecordPatient, parse_feed, start_patient_feed
from registry.patients import Demographics, PatientIdState, cross_references, xds_patient_id_state
from registry.settings import RegistrySettings
from tests.conftest import free_port

NHS = "2.16.840.1.113883.2.1.4.1"
HOSP_A = "1.2.826.0.1.999.1"
HOSP_B = "1.2.826.0.1.999.2"


def nhs_cx(n: str) -> str:
    return f"{n}^^^NHS&{NHS}&ISO"


def hosp_a_cx(n: str) -> str:
    return f"{n}^^^HOSPA&{HOSP_A}&ISO"


def adt(event: str, pid3: str, *, name: str = "Smith^Jane", dob: str = "19800102", sex: str = "F",
        version: str = "2.5", mrg: str | None = None, control: str = "MSG0001", structure: str | None = None) -> str:
    """An ADT message as a Patient Identity Source sends it (segments CR-separated)."""
    msh9 = f"ADT^{event}" if version == "2.3.1" else f"ADT^{event}^{structure or 'ADT_A01'}"
    segments = [
        f"MSH|^~\\&|PAS|HOSPA|XDS-REG|NETWORK|20240105120000||{msh9}|{control}|P|{version}",
        f"EVN|{event}|20240105120000",
        f"PID|||{pid3}||{name}||{dob}|{sex}",
    ]
    if mrg is not None:
        segments.append(f"MRG|{mrg}")
    else:
        segments.append("PV1||O")
    return "\r".join(segments) + "\r"


def parsed(text: str) -> hl7.Message:
    return parse_message(text)


# --- pure: message -> command ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.3.1", "2.5"])
@pytest.mark.parametrize("event", ["A01", "A03", "A04", "A05", "A08"])
def test_record_events_keep_every_identifier(version, event):
    pid3 = f"{nhs_cx('9434765919')}~{hosp_a_cx('A100')}~B200^^^HOSPB"
    command = parse_feed(parsed(adt(event, pid3, version=version)))
    assert command == RecordPatient(
        (Identifiable("9434765919", NHS, "NHS"), Identifiable("A100", HOSP_A, "HOSPA"),
         Identifiable("B200", None, "HOSPB")),
        Demographics("Smith", "Jane", "19800102", "F"),
        event, ("HOSPA", None),  # the sending facility (MSH-4): whose care relationship, for the access policy
    )


def test_demographics_details():
    # LF separators, a time in the birth date, HL7 null for the given name, escaped family name.
    text = adt("A08", nhs_cx("9000000017"), name='O\\T\\Neil^""', dob="198001021230", sex="m").replace("\r", "\n")
    command = parse_feed(parsed(text))
    assert command.demographics == Demographics("O&Neil", "", "19800102", "M")
    bare = parse_feed(parsed(adt("A01", nhs_cx("9000000017"), name="", dob="", sex="")))
    assert bare.demographics == Demographics()


def test_a40_pairs_merged_and_surviving_by_domain():
    text = adt("A40", f"{nhs_cx('9000002222')}~{hosp_a_cx('A2')}", mrg=nhs_cx("9000003334"), structure="ADT_A39")
    command = parse_feed(parsed(text))
    assert isinstance(command, MergePatients)
    assert command.pairs == ((Identifiable("9000002222", NHS, "NHS"), Identifiable("9000003334", NHS, "NHS")),)
    assert command.identifiers == (Identifiable("9000002222", NHS, "NHS"), Identifiable("A2", HOSP_A, "HOSPA"))


def _error(text: str) -> HL7Error:
    with pytest.raises(HL7Error) as info:
        parse_feed(parsed(text))
    return info.value


@pytest.mark.parametrize(("text", "ack", "code", "where", "words"), [
    (adt("A01", ""), "AE", "101", ("PID", 1, 3, 0, 0), "carries no patient identifier"),
    (adt("A01", "123^^^"), "AE", "101", ("PID", 1, 3, 1, 4), "no assigning authority"),
    (adt("A01", f"{nhs_cx('9000000017')}~^^^HOSPA"), "AE", "101", ("PID", 1, 3, 2, 1), "no ID number"),
    (adt("A01", nhs_cx("9000000017"), dob="1980-01-02"), "AE", "102", ("PID", 1, 7, 0, 0), "not an HL7 date"),
    (adt("A01", nhs_cx("9000000017"), dob="19801302"), "AE", "102", ("PID", 1, 7, 0, 0), "not an HL7 date"),
    (adt("A01", nhs_cx("9000000017"), sex="X"), "AE", "103", ("PID", 1, 8, 0, 0), "table 0001"),
    (adt("A40", nhs_cx("9000000017"), structure="ADT_A39"), "AE", "101", ("MRG", 1, 0, 0, 0), "MRG segment"),
    (adt("A40", nhs_cx("9000000017"), mrg=hosp_a_cx("A1")), "AE", "101", ("PID", 1, 3, 0, 0),
     "assigning authority of MRG-1"),
    (adt("A11", nhs_cx("9000000017")), "AR", "201", ("MSH", 1, 9, 0, 0), "ADT event A11 is not supported"),
    (adt("A01", nhs_cx("9000000017")).replace("ADT^A01^ADT_A01", "ORM^O01"), "AR", "200", ("MSH", 1, 9, 0, 0),
     "message type ORM"),
    (adt("A01", nhs_cx("9000000017"), version="2.4"), "AR", "203", ("MSH", 1, 12, 0, 0), "2.4 in MSH-12"),
    (adt("A01", nhs_cx("9000000017")).replace("|P|2.5", "|X|2.5"), "AR", "202", ("MSH", 1, 11, 0, 0), "processing id"),
    (adt("A01", nhs_cx("9000000017")).replace("|MSG0001|", "||"), "AR", "101", ("MSH", 1, 10, 0, 0), "MSH-10"),
    (adt("A01", nhs_cx("9000000017")).split("\r")[0], "AE", "101", ("PID", 1, 0, 0, 0), "no PID segment"),
])
def test_bad_messages_are_answered_with_reasons(text, ack, code, where, words):
    error = _error(text)
    assert (error.ack_code, error.code) == (ack, code)
    loc = error.location
    assert (loc.segment, loc.sequence, loc.field, loc.repetition, loc.component) == where
    assert words in error.reason


@pytest.mark.parametrize(("pid3", "repetition", "words"), [
    (nhs_cx("9434765918"), 1, "wrong check digit (expected 9, found 8)"),
    (f"{hosp_a_cx('A100')}~{nhs_cx('9434765991')}", 2, "wrong check digit"),
    (f"1234567890^^^&{NHS}&ISO", 1, "no check digit exists"),
    (f"943 476 5919^^^&{NHS}&ISO", 1, "not ten digits"),
])
def test_nhs_number_with_a_wrong_check_digit_is_ae(pid3, repetition, words):
    error = _error(adt("A01", pid3))
    assert (error.ack_code, error.code) == ("AE", "102")
    loc = error.location
    assert (loc.segment, loc.field, loc.repetition, loc.component) == ("PID", 3, repetition, 1)
    assert words in error.reason and "PID-3" in error.reason


def test_nhs_number_check_applies_to_the_merged_id_and_only_to_the_nhs_authority():
    error = _error(adt("A40", nhs_cx("9434765919"), mrg=nhs_cx("9434765918"), structure="ADT_A39"))
    assert (error.ack_code, error.code, error.location.segment, error.location.field) == ("AE", "102", "MRG", 1)
    # Hospital numbers and other authorities' ids have their own rules: not checked as NHS numbers.
    command = parse_feed(parsed(adt("A01", f"{nhs_cx('9434765919')}~{hosp_a_cx('1234567890')}~12^^^NHS")))
    assert isinstance(command, RecordPatient) and len(command.identifiers) == 3


def test_garbage_is_rejected_before_parsing():
    for text in ("hello", "", "PID|||1", "MSH"):
        with pytest.raises(HL7Error) as info:
            parse_message(text)
        assert info.value.ack_code == "AR"


# --- pure: ACK ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.3.1", "2.5"])
def test_ack_swaps_addressing_and_echoes_control_id(version):
    request = parsed(adt("A08", nhs_cx("9000000017"), version=version, control="CTRL-42"))
    ack = parsed(build_ack(request))
    assert [get(ack, f"MSH.F{n}") for n in (3, 4, 5, 6)] == ["XDS-REG", "NETWORK", "PAS", "HOSPA"]
    assert str(ack.segment("MSH")(9)) == "ACK^A08^ACK"
    assert get(ack, "MSH.F12") == version
    assert get(ack, "MSH.F10") and get(ack, "MSH.F10") != "CTRL-42"
    assert (get(ack, "MSA.F1"), get(ack, "MSA.F2")) == ("AA", "CTRL-42")
    with pytest.raises(KeyError):
        ack.segment("ERR")


def test_error_ack_has_err_in_the_form_of_the_version():
    error = _error(adt("A01", "123^^^"))
    ack25 = parsed(build_ack(parsed(adt("A01", "123^^^")), "AE", error))
    assert get(ack25, "MSA.F1") == "AE"
    assert str(ack25.segment("ERR")(2)) == "PID^1^3^1^4"
    assert get(ack25, "ERR.F3.R1.C1") == "101" and get(ack25, "ERR.F4") == "E"
    assert "no assigning authority" in get(ack25, "ERR.F8")
    ack231 = parsed(build_ack(parsed(adt("A01", "123^^^", version="2.3.1")), "AE", error))
    assert get(ack231, "MSH.F12") == "2.3.1"
    assert str(ack231.segment("ERR")(1)) == "PID^1^3^101&Required field missing&HL70357"
    assert "no assigning authority" in get(ack231, "MSA.F3")


# --- over MLLP against the registry ----------------------------------------------------------


@contextlib.asynccontextmanager
async def running_feed(database_url: str, **settings) -> AsyncIterator[Registry]:
    """The registry's MLLP listener (start_patient_feed) on a free port, as registry.app starts it."""
    registry = await open_registry(
        RegistrySettings(mllp_host="127.0.0.1", mllp_port=free_port(), pool_size=4, **settings), database_url)
    server = await start_patient_feed(registry)
    try:
        yield registry
    finally:
        server.close()
        await registry.pool.close()


class Peer:
    """One MLLP connection, as a Patient Identity Source or PIX consumer holds it."""

    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer

    async def send_raw(self, data: bytes) -> hl7.Message:
        self.writer.write(data)
        await self.writer.drain()
        block = await asyncio.wait_for(self.reader.readblock(), 10)
        return parse_message(block.decode("utf-8"))

    async def send(self, text: str) -> hl7.Message:
        return await self.send_raw(b"\x0b" + text.encode("utf-8") + b"\x1c\r")


@contextlib.asynccontextmanager
async def connect(registry: Registry) -> AsyncIterator[Peer]:
    reader, writer = await open_hl7_connection("127.0.0.1", registry.settings.mllp_port)
    try:
        yield Peer(reader, writer)
    finally:
        writer.close()


@pytest.fixture
async def feed(registry_database_url, registry_pool) -> AsyncIterator[Registry]:
    async with running_feed(registry_database_url) as registry:
        yield registry


async def _state(registry: Registry, n: str) -> PatientIdState:
    async with registry.pool.acquire() as conn:
        return await xds_patient_id_state(conn, Identifiable(n, NHS), NHS)


async def _xrefs(registry: Registry, ident: Identifiable, domains=None) -> set[Identifiable]:
    async with registry.pool.acquire() as conn:
        return set(await cross_references(conn, ident, domains))


async def test_a01_then_a08_over_mllp(feed):
    async with connect(feed) as peer:
        ack = await peer.send(adt("A01", f"{nhs_cx('9434765919')}~{hosp_a_cx('A100')}~B200^^^HOSPB",
                                  control="C1"))
        assert (get(ack, "MSA.F1"), get(ack, "MSA.F2")) == ("AA", "C1")
        assert await _state(feed, "9434765919") is PatientIdState.KNOWN
        assert await _xrefs(feed, Identifiable("A100", HOSP_A)) == {
            Identifiable("9434765919", NHS, "NHS"), Identifiable("B200", None, "HOSPB")}

        ack = await peer.send(adt("A08", f"{hosp_a_cx('A100')}~{hosp_a_cx('A101')}", name="Jones^Janet",
                                  version="2.3.1", control="C2"))
        assert (get(ack, "MSA.F1"), get(ack, "MSA.F2"), get(ack, "MSH.F12")) == ("AA", "C2", "2.3.1")
        async with feed.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT p.family_name, p.given_name, p.birth_date, p.sex FROM patient p"
                                      " JOIN patient_identifier i ON i.patient = p.id WHERE i.id_value = 'A101'")
            assert tuple(row) == ("Jones", "Janet", "19800102", "F")
            assert await conn.fetchval("SELECT count(*) FROM patient") == 1


async def test_conflicting_feed_is_ae_and_writes_nothing(feed):
    async with connect(feed) as peer:
        assert get(await peer.send(adt("A01", nhs_cx("9000000017"))), "MSA.F1") == "AA"
        assert get(await peer.send(adt("A01", nhs_cx("9000000025"))), "MSA.F1") == "AA"
        ack = await peer.send(adt("A08", f"{nhs_cx('9000000017')}~{nhs_cx('9000000025')}~{hosp_a_cx('NEW')}"))
        assert get(ack, "MSA.F1") == "AE"
        assert get(ack, "ERR.F3.R1.C1") == "205" and "merge them with A40" in get(ack, "ERR.F8")
    assert await _xrefs(feed, Identifiable("NEW", HOSP_A)) == set()


async def _insert_entry(registry: Registry, patient_cx: str) -> uuid.UUID:
    entry = uuid.uuid4()
    fragment = (
        f'<rim:ExtrinsicObject xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0" id="urn:uuid:{entry}">'
        f'<rim:ExternalIdentifier id="urn:uuid:{uuid.uuid4()}" registryObject="urn:uuid:{entry}"'
        f' identificationScheme="{v.DE_PATIENT_ID}" value="{escape(patient_cx)}"/></rim:ExtrinsicObject>'
    )
    async with registry.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO document_entry (id, lid, status, object_type, patient_id, unique_id, ebrim)"
            " VALUES ($1, $1, $2, $3, $4, $5, $6)",
            entry, v.STATUS_APPROVED, v.DOCUMENT_ENTRY_STABLE, patient_cx, f"1.2.3.{entry.int % 10**9}", fragment)
    return entry


async def test_a40_merge_over_mllp_moves_documents(feed):
    async with connect(feed) as peer:
        await peer.send(adt("A01", f"{nhs_cx('9000002222')}~{hosp_a_cx('S1')}", name="Keep^Me"))
        await peer.send(adt("A01", f"{nhs_cx('9000003334')}~B9^^^HOSPB", name="Drop^Me"))
        entry = await _insert_entry(feed, f"9000003334^^^&{NHS}&ISO")

        ack = await peer.send(adt("A40", nhs_cx("9000002222"), name="Kept^Me", mrg=nhs_cx("9000003334"),
                                  structure="ADT_A39", control="M1"))
        assert (get(ack, "MSA.F1"), get(ack, "MSA.F2"), str(ack.segment("MSH")(9))) == ("AA", "M1", "ACK^A40^ACK")
        assert await _state(feed, "9000003334") is PatientIdState.MERGED
        assert await _state(feed, "9000002222") is PatientIdState.KNOWN
        assert await _xrefs(feed, Identifiable("B9", None, "HOSPB"), [NHS]) == {Identifiable("9000002222", NHS, "NHS")}
        async with feed.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT patient_id, ebrim FROM document_entry WHERE id = $1", entry)
            assert row["patient_id"] == f"9000002222^^^&{NHS}&ISO"
            assert escape(f"9000002222^^^&{NHS}&ISO") in row["ebrim"] and "9000003334^^^" not in row["ebrim"]
            assert await conn.fetchval(
                "SELECT family_name FROM patient p JOIN patient_identifier i ON i.patient = p.id"
                " WHERE i.id_value = '9000002222'") == "Kept"

        # The same A40 again (e.g. the ACK was lost) is accepted; the merged id cannot come back.
        assert get(await peer.send(adt("A40", nhs_cx("9000002222"), mrg=nhs_cx("9000003334"))), "MSA.F1") == "AA"
        ack = await peer.send(adt("A01", nhs_cx("9000003334")))
        assert get(ack, "MSA.F1") == "AE" and "merged" in get(ack, "ERR.F8")
        ack = await peer.send(adt("A40", nhs_cx("9000002222"), mrg=nhs_cx("9000009995")))
        assert (get(ack, "MSA.F1"), get(ack, "ERR.F3.R1.C1"), str(ack.segment("ERR")(2))) == ("AE", "204", "MRG^1^1")
        ack = await peer.send(adt("A40", nhs_cx("9000009987"), mrg=nhs_cx("9000002222")))
        assert (get(ack, "MSA.F1"), get(ack, "ERR.F3.R1.C1"), str(ack.segment("ERR")(2))) == ("AE", "204", "PID^1^3")
    assert await _state(feed, "9000002222") is PatientIdState.KNOWN


async def test_listener_survives_bad_input(feed):
    async with connect(feed) as peer:
        ack = await peer.send("this is not HL7")
        assert get(ack, "MSA.F1") == "AR" and "MSH" in get(ack, "MSA.F3")
        ack = await peer.send_raw(b"no start block\x1c\r")
        assert get(ack, "MSA.F1") == "AR" and "MLLP" in get(ack, "MSA.F3")
        ack = await peer.send_raw(b"\x0b" + "MSH|^~\\&|X|Y|||||ADT^A01|Z|P|2.5\rPID|||\xe9t\xe9^^^HA".encode("latin-1")
                                  + b"\x1c\r")
        assert get(ack, "MSA.F1") == "AA"  # not UTF-8: read as ISO 8859-1
        ack = await peer.send(adt("A11", nhs_cx("9000000017")))
        assert get(ack, "MSA.F1") == "AR" and get(ack, "ERR.F3.R1.C1") == "201"
        # An ACK is never acknowledged: the next answer is the next message's.
        peer.writer.write(b"\x0b" + build_ack(parsed(adt("A01", nhs_cx("9000000017")))).encode() + b"\x1c\r")
        ack = await peer.send(adt("A01", nhs_cx("9000000777"), control="AFTER"))
        assert (get(ack, "MSA.F1"), get(ack, "MSA.F2")) == ("AA", "AFTER")
    async with feed.pool.acquire() as conn:
        assert await conn.fetchval("SELECT authority FROM patient_identifier WHERE id_value = 'été'") == "HA"

    # A message over the size limit ends its connection with an AR; the listener goes on.
    async with connect(feed) as peer:
        ack = await peer.send("MSH|" + "x" * (1024 * 1024 + 10))
        assert get(ack, "MSA.F1") == "AR" and "larger than" in get(ack, "MSA.F3")
    async with connect(feed) as peer:
        assert get(await peer.send(adt("A01", nhs_cx("9000000785"))), "MSA.F1") == "AA"


async def test_wrong_nhs_check_digit_over_mllp_is_ae_and_writes_nothing(feed):
    async with connect(feed) as peer:
        ack = await peer.send(adt("A01", f"{hosp_a_cx('A700')}~{nhs_cx('9434765918')}", control="NHS1"))
        assert (get(ack, "MSA.F1"), get(ack, "MSA.F2")) == ("AE", "NHS1")
        assert str(ack.segment("ERR")(2)) == "PID^1^3^2^1"
        assert get(ack, "ERR.F3.R1.C1") == "102" and "check digit" in get(ack, "ERR.F8")
        assert get(await peer.send(adt("A01", f"{hosp_a_cx('A700')}~{nhs_cx('9434765919')}")), "MSA.F1") == "AA"
    async with feed.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM patient_identifier WHERE id_value = '9434765918'") == 0
    assert await _xrefs(feed, Identifiable("A700", HOSP_A)) == {Identifiable("9434765919", NHS, "NHS")}


async def test_database_failure_is_ar_207_and_listener_lives(registry_database_url, registry_pool):
    async with running_feed(registry_database_url) as registry:
        await registry.pool.close()  # the database is gone for this registry
        async with connect(registry) as peer:
            ack = await peer.send(adt("A01", nhs_cx("9000000017"), control="DOWN"))
            assert (get(ack, "MSA.F1"), get(ack, "MSA.F2"), get(ack, "ERR.F3.R1.C1")) == ("AR", "DOWN", "207")
            assert "Traceback" not in str(ack)
            assert get(await peer.send("garbage"), "MSA.F1") == "AR"


async def test_registry_process_answers_feed_and_pix_on_one_port(registry_process, registry_pool):
    """The real ``xds-registry`` process: ITI-8 and ITI-9 on its --mllp-port."""
    from ihe.hl7 import pix_query

    reader, writer = await open_hl7_connection("127.0.0.1", registry_process.mllp_port)
    peer = Peer(reader, writer)
    try:
        ack = await peer.send(adt("A04", f"{nhs_cx('9000005558')}~{hosp_a_cx('H555')}", control="P1"))
        assert (get(ack, "MSA.F1"), get(ack, "MSA.F2")) == ("AA", "P1")
        assert get(await peer.send(adt("A01", nhs_cx("9000005566"))), "MSA.F1") == "AA"
        ack = await peer.send(adt("A40", nhs_cx("9000005566"), mrg=nhs_cx("9000005558"), structure="ADT_A39"))
        assert get(ack, "MSA.F1") == "AA"
    finally:
        writer.close()
    found = await pix_query("127.0.0.1", registry_process.mllp_port, Identifiable("H555", HOSP_A), [NHS])
    assert found == [Identifiable("9000005566", NHS, "NHS")]
    async with registry_pool.acquire() as conn:
        assert await xds_patient_id_state(conn, Identifiable("9000005558", NHS), None) is PatientIdState.MERGED
