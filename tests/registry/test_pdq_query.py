"""ITI-21 PDQ: QBP^Q22 parsing and RSP^K22 (pure), then the client and raw messages against the registry's
MLLP listener after patients were fed by ADT (ITI-8), and the real ``xds-registry`` process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hl7.mllp import open_hl7_connection

from ihe.hl7 import HL7Error, PdqPatient, PdqQueryError, get, parse_message, pdq_query
from ihe.metadata.model import Identifiable
from ihe.pdq import build_pdq_query, read_pdq_response
from registry.app import Registry
from registry.pdq_query import PdqQuery, parse_pdq_query
from tests.conftest import free_port
from tests.registry.test_patient_feed import HOSP_A, HOSP_B, NHS, Peer, adt, connect, running_feed

# Valid NHS numbers (modulus 11 check digit), as the feed requires.
ANNE_NHS, BOB_NHS, CARL_NHS, GONE_NHS = "9434765005", "9434765013", "9434765021", "9434765048"


def cx(n: str, ns: str, oid: str) -> str:
    return f"{n}^^^{ns}&{oid}&ISO"


def qbp(qpd3: str, qpd8: str = "", *, msh9: str = "QBP^Q22^QBP_Q21", version: str = "2.5", rcp: str = "RCP|I",
        tag: str = "PDQ1") -> str:
    return "\r".join([
        f"MSH|^~\\&|PORTAL|NETWORK|XDS-REG|NETWORK|20240105120000||{msh9}|Q0001|P|{version}",
        f"QPD|IHE PDQ Query|{tag}|{qpd3}|||||{qpd8}",
        rcp,
    ]) + "\r"


# --- pure --------------------------------------------------------------------------------------


def test_parse_query_fields_and_domains():
    query = parse_pdq_query(parse_message(qbp(
        "@PID.5.1.1^SMI*~@PID.5.2^anne~@PID.7^19800102~@PID.8^f~@PID.3.1^A100~@PID.3.4.2^" + HOSP_A,
        f"^^^&{NHS}&ISO~^^^HOSPB", rcp="RCP|I|5^RD")))
    assert query == PdqQuery(family="SMI*", given="anne", birth_date="19800102", sex="F", identifier="A100",
                             oid=HOSP_A, domains=(Identifiable("", NHS), Identifiable("", None, "HOSPB")), limit=5)
    assert parse_pdq_query(parse_message(qbp("@PID.5.1^Smith~@PID.7.1^198001021230"))).birth_date == "19800102"
    by_hd = parse_pdq_query(parse_message(qbp(f"@PID.3.1^A100~@PID.3.4^HOSPA&{HOSP_A}&ISO")))
    assert (by_hd.identifier, by_hd.namespace, by_hd.oid) == ("A100", "HOSPA", HOSP_A)


@pytest.mark.parametrize(("text", "ack", "code", "where"), [
    (qbp("@PID.5.1^X", version="2.3.1"), "AR", "203", "MSH"),
    (qbp("@PID.5.1^X", msh9="QBP^Q23^QBP_Q21"), "AR", "201", "MSH"),
    (qbp("@PID.11.3^Leeds"), "AE", "103", "QPD"),
    (qbp("@PID.7^1980-01-02"), "AE", "102", "QPD"),
    (qbp("@PID.8^Q"), "AE", "103", "QPD"),
    (qbp("@PID.5.1^"), "AE", "101", "QPD"),
    (qbp("@PID.3.4.2^" + HOSP_A), "AE", "101", "QPD"),
    (qbp("@PID.5.1^X", "NOAUTH"), "AE", "101", "QPD"),
    (qbp("@PID.5.1^X", rcp="RCP|I|many^RD"), "AE", "102", "RCP"),
])
def test_bad_queries(text, ack, code, where):
    with pytest.raises(HL7Error) as info:
        parse_pdq_query(parse_message(text))
    assert (info.value.ack_code, info.value.code) == (ack, code)
    assert info.value.location is not None and info.value.location.segment == where


def test_client_message_round_trips_through_the_parser():
    text = build_pdq_query(query_tag="T1", family="O'Brien^x", birth_date="19700101",
                           identifier=Identifiable("A100", HOSP_A, "HOSPA"), domains=[NHS, "HOSPB"], limit=3)
    query = parse_pdq_query(parse_message(text))
    assert (query.family, query.birth_date, query.identifier, query.namespace, query.oid, query.limit) == (
        "O'Brien^x", "19700101", "A100", "HOSPA", HOSP_A, 3)
    assert query.domains == (Identifiable("", NHS), Identifiable("", None, "HOSPB"))
    with pytest.raises(ValueError):
        build_pdq_query(query_tag="T2")


def test_client_reads_errors_as_pdq_query_errors():
    refused = ("MSH|^~\\&|R|N|P|N|20240101||RSP^K22^RSP_K21|1|P|2.5\rMSA|AE|Q0001\r"
               "ERR||QPD^1^8^1^4|204^Unknown key identifier^HL70357|E||||domain 1.2.3 is not known\rQAK|T|AE\r")
    with pytest.raises(PdqQueryError, match=r"domain 1\.2\.3 is not known"):
        read_pdq_response(refused)
    assert read_pdq_response("MSH|^~\\&|R|N|P|N|20240101||RSP^K22^RSP_K21|1|P|2.5\rMSA|AA|Q0001\rQAK|T|NF\r") == []
    with pytest.raises(PdqQueryError):
        read_pdq_response("not hl7")


# --- against the MLLP listener, after ADT feeds -------------------------------------------------------


@pytest.fixture
async def pdq(registry_database_url, registry_pool) -> AsyncIterator[Registry]:
    async with running_feed(registry_database_url, affinity_domain_oid=NHS) as registry:
        async with connect(registry) as peer:
            for message in (
                adt("A01", f"{cx(ANNE_NHS, 'NHS', NHS)}~{cx('A100', 'HOSPA', HOSP_A)}", name="Smith^Anne",
                    dob="19800102", sex="F", control="F1"),
                adt("A04", f"{cx('B200', 'HOSPB', HOSP_B)}", name="Smith^Anne", dob="19800102", sex="F",
                    control="F1b"),  # a namesake at hospital B only
                adt("A01", f"{cx(BOB_NHS, 'NHS', NHS)}~{cx('B201', 'HOSPB', HOSP_B)}", name="SMITHSON^Bob",
                    dob="19751231", sex="M", control="F2"),
                adt("A01", f"{cx(CARL_NHS, 'NHS', NHS)}", name="Jones^Carl", dob="19800102", sex="M", control="F3"),
                adt("A01", f"{cx(GONE_NHS, 'NHS', NHS)}", name="Jones^Carl", dob="19800102", sex="M", control="F4"),
                adt("A40", cx(CARL_NHS, "NHS", NHS), mrg=cx(GONE_NHS, "NHS", NHS), name="Jones^Carl",
                    structure="ADT_A39", control="F5"),
            ):
                ack = await peer.send(message)
                assert get(ack, "MSA.F1") == "AA", str(ack)
        yield registry


async def find(registry: Registry, **kwargs) -> list[PdqPatient]:
    return await pdq_query("127.0.0.1", registry.settings.mllp_port, **kwargs)


def ids(patients: list[PdqPatient]) -> list[set[str]]:
    return [{i.id for i in p.identifiers} for p in patients]


async def test_family_name_and_birth_date(pdq):
    found = await find(pdq, family="smith", birth_date="19800102")
    assert ids(found) == [{ANNE_NHS, "A100"}, {"B200"}]
    anne = found[0]
    assert (anne.family, anne.given, anne.birth_date, anne.sex) == ("Smith", "Anne", "19800102", "F")
    assert anne.identifier_in(NHS) == Identifiable(ANNE_NHS, NHS, "NHS")
    assert anne.identifier_in(HOSP_A) == Identifiable("A100", HOSP_A, "HOSPA")


async def test_wildcards_given_name_and_sex(pdq):
    assert ids(await find(pdq, family="SMITH*", sex="M")) == [{BOB_NHS, "B201"}]
    assert ids(await find(pdq, family="smi*", given="a*")) == [{ANNE_NHS, "A100"}, {"B200"}]
    assert ids(await find(pdq, family="Smith")) == [{ANNE_NHS, "A100"}, {"B200"}]  # not SMITHSON
    assert await find(pdq, family="Smit") == []


async def test_by_identifier_with_and_without_authority(pdq):
    assert ids(await find(pdq, identifier=Identifiable("A100", HOSP_A))) == [{ANNE_NHS, "A100"}]
    assert ids(await find(pdq, identifier=Identifiable("A100", None, "HOSPA"))) == [{ANNE_NHS, "A100"}]
    assert await find(pdq, identifier=Identifiable("A100", HOSP_B)) == []
    assert ids(await find(pdq, identifier=Identifiable(BOB_NHS, NHS), family="smithson")) == [{BOB_NHS, "B201"}]


async def test_domain_restriction(pdq):
    """QPD-8: only identifiers of those domains, and only patients having one (the namesake at B drops out)."""
    found = await find(pdq, family="smith", birth_date="19800102", domains=[NHS])
    assert [[(i.id, i.authority_oid) for i in p.identifiers] for p in found] == [[(ANNE_NHS, NHS)]]
    found = await find(pdq, family="smith*", domains=["HOSPB"])
    assert ids(found) == [{"B200"}, {"B201"}]


async def test_merged_identifier_is_not_returned(pdq):
    found = await find(pdq, family="jones")
    assert ids(found) == [{CARL_NHS}]
    assert await find(pdq, identifier=Identifiable(GONE_NHS, NHS)) == []


async def test_raw_answers_ok_nf_ae(pdq):
    async with connect(pdq) as peer:
        ok = await peer.send(qbp("@PID.5.1.1^smith~@PID.7^19800102", f"^^^&{NHS}&ISO", rcp="RCP|I|1^RD"))
        assert [get(ok, f"MSH.F9.R1.C{n}") for n in (1, 2, 3)] == ["RSP", "K22", "RSP_K21"]
        assert (get(ok, "MSA.F1"), get(ok, "MSA.F2")) == ("AA", "Q0001")
        assert (get(ok, "QAK.F1"), get(ok, "QAK.F2"), get(ok, "QAK.F3")) == ("PDQ1", "OK", "IHE PDQ Query")
        assert (get(ok, "QAK.F4"), get(ok, "QAK.F5"), get(ok, "QAK.F6")) == ("1", "1", "0")
        assert get(ok, "QPD.F2") == "PDQ1"
        assert (get(ok, "PID.F1"), get(ok, "PID.F3.R1.C1"), get(ok, "PID.F3.R1.C4.S2")) == ("1", ANNE_NHS, NHS)
        assert (get(ok, "PID.F5.R1.C1"), get(ok, "PID.F7"), get(ok, "PID.F8")) == ("Smith", "19800102", "F")
        limited = await peer.send(qbp("@PID.5.1.1^smith*", rcp="RCP|I|2^RD"))
        assert (get(limited, "QAK.F4"), get(limited, "QAK.F5"), get(limited, "QAK.F6")) == ("3", "2", "1")
        assert len(limited.segments("PID")) == 2

        nf = await peer.send(qbp("@PID.5.1.1^nobody"))
        assert (get(nf, "MSA.F1"), get(nf, "QAK.F2")) == ("AA", "NF")
        assert "\rPID|" not in str(nf) and "\rERR|" not in str(nf)

        unknown = await peer.send(qbp("@PID.5.1.1^smith", "^^^&1.2.3.999&ISO"))
        assert (get(unknown, "MSA.F1"), get(unknown, "QAK.F2")) == ("AE", "AE")
        assert get(unknown, "ERR.F3.R1.C1") == "204"
        assert [get(unknown, f"ERR.F2.R1.C{n}") for n in range(1, 6)] == ["QPD", "1", "8", "1", "4"]
        assert "1.2.3.999" in get(unknown, "ERR.F8")

        bad = await peer.send(qbp("@PID.18^ACC1"))
        assert (get(bad, "MSA.F1"), get(bad, "QAK.F2"), get(bad, "ERR.F3.R1.C1")) == ("AE", "AE", "103")
        assert "@PID.18" in get(bad, "ERR.F8")


async def test_pix_query_still_answered_beside_pdq(pdq):
    from ihe.hl7 import pix_query

    assert await pix_query("127.0.0.1", pdq.settings.mllp_port, Identifiable("A100", HOSP_A), [NHS]) == [
        Identifiable(ANNE_NHS, NHS, "NHS")]
    async with connect(pdq) as peer:
        other = await peer.send(qbp("@PID.5.1^X", msh9="QBP^Q99^QBP_Q21"))
        assert get(other, "MSA.F1") == "AR"


async def test_client_errors():
    with pytest.raises(PdqQueryError):
        await pdq_query("127.0.0.1", free_port(), family="x", timeout=2)


async def test_registry_process_answers_pdq(registry_process, registry_pool):
    """The real ``xds-registry`` process: ADT in, then ITI-21 on the same --mllp-port."""
    reader, writer = await open_hl7_connection("127.0.0.1", registry_process.mllp_port)
    peer = Peer(reader, writer)
    try:
        ack = await peer.send(adt("A01", f"{cx(ANNE_NHS, 'NHS', NHS)}~{cx('A100', 'HOSPA', HOSP_A)}",
                                  name="O'Hara^Anne", dob="19800102", sex="F"))
        assert get(ack, "MSA.F1") == "AA"
    finally:
        writer.close()
    found = await pdq_query("127.0.0.1", registry_process.mllp_port, family="o'hara", birth_date="19800102")
    assert len(found) == 1
    assert set(found[0].identifiers) == {Identifiable(ANNE_NHS, NHS, "NHS"), Identifiable("A100", HOSP_A, "HOSPA")}
    assert (found[0].family, found[0].given, found[0].birth_date, found[0].sex) == ("O'Hara", "Anne", "19800102", "F")
