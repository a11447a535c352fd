"""ITI-9 PIX query: QBP^Q23 parsing and RSP^K23 (pure), then the client against the registry's listener."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ihe.hl7 import (
    ErrorLocation,
    HL7Error,
    PixQueryError,
    build_pix_query,
    get,
    parse_message,
    pix_query,
    read_pix_response,
)
from ihe.metadata.model import Identifiable
from registry.app import Registry
from registry.patients import Demographics, merge_patients, record_patient
from registry.pix_query import PixQuery, build_pix_response, parse_pix_query
from tests.conftest import free_port
from tests.registry.test_patient_feed import HOSP_A, HOSP_B, NHS, connect, running_feed

NHS_NO = Identifiable("9434765919", NHS, "NHS")
HOSP_A_NO = Identifiable("A100", HOSP_A, "HOSPA")
HOSP_B_NO = Identifiable("B200", HOSP_B, "HOSPB")
OTHER_AUTHORITY = "1.2.826.0.1.999.3"


def qbp(qpd3: str, qpd4: str = "", *, version: str = "2.5", msh9: str = "QBP^Q23^QBP_Q21", tag: str = "TAG1") -> str:
    return "\r".join([
        f"MSH|^~\\&|PACS|HOSPA|XDS-REG|NETWORK|20240105120000||{msh9}|Q0001|P|{version}",
        f"QPD|IHE PIX Query|{tag}|{qpd3}|{qpd4}",
        "RCP|I",
    ]) + "\r"


# --- pure --------------------------------------------------------------------------------------


def test_parse_query_with_domains():
    query = parse_pix_query(parse_message(qbp(f"A100^^^HOSPA&{HOSP_A}&ISO", f"^^^&{NHS}&ISO~^^^HOSPB")))
    assert query == PixQuery(HOSP_A_NO, (Identifiable("", NHS), Identifiable("", None, "HOSPB")))
    assert parse_pix_query(parse_message(qbp("A100^^^HOSPA"))).domains == ()


@pytest.mark.parametrize(("text", "ack", "code", "erl"), [
    (qbp("A100^^^HOSPA", version="2.3.1"), "AR", "203", ("MSH", 12, 0, 0)),
    (qbp("A100^^^HOSPA", msh9="QBP^Q22^QBP_Q21"), "AR", "201", ("MSH", 9, 0, 0)),
    (qbp("^^^HOSPA"), "AE", "101", ("QPD", 3, 1, 1)),
    (qbp("A100"), "AE", "101", ("QPD", 3, 1, 4)),
    (qbp("A100^^^HOSPA", f"^^^&{NHS}&ISO~NOAUTH"), "AE", "101", ("QPD", 4, 2, 4)),
    (qbp("A1").split("\r")[0], "AE", "101", ("QPD", 0, 0, 0)),
])
def test_bad_queries(text, ack, code, erl):
    with pytest.raises(HL7Error) as info:
        parse_pix_query(parse_message(text))
    error = info.value
    loc = error.location
    assert (error.ack_code, error.code, (loc.segment, loc.field, loc.repetition, loc.component)) == (ack, code, erl)


def test_found_response_shape():
    request = parse_message(qbp(f"A100^^^HOSPA&{HOSP_A}&ISO", tag="T-9"))
    response = parse_message(build_pix_response(request, "AA", "OK", [NHS_NO, Identifiable("B2", None, "HB")]))
    assert str(response.segment("MSH")(9)) == "RSP^K23^RSP_K23"
    assert [get(response, f"MSH.F{n}") for n in (3, 5, 12)] == ["XDS-REG", "PACS", "2.5"]
    assert (get(response, "MSA.F1"), get(response, "MSA.F2")) == ("AA", "Q0001")
    assert (get(response, "QAK.F1"), get(response, "QAK.F2")) == ("T-9", "OK")
    assert str(response.segment("QPD")) == str(request.segment("QPD"))
    assert str(response.segment("PID")(3)) == f"9434765919^^^NHS&{NHS}&ISO~B2^^^HB"
    assert str(response.segment("PID")(5)) == "~^^^^^^S"  # no demographics disclosed
    assert read_pix_response(str(response)) == [NHS_NO, Identifiable("B2", None, "HB")]


def test_client_reading_of_answers():
    request = parse_message(qbp("X^^^HOSPA"))
    assert read_pix_response(build_pix_response(request, "AA", "NF")) == []
    for component in (1, 4):
        error = HL7Error("AE", "not known", "204", ErrorLocation("QPD", 1, 3, 1, component))
        assert read_pix_response(build_pix_response(request, "AE", "AE", error=error)) == []
    domain_error = HL7Error("AE", "domain 9.9 not known", "204", ErrorLocation("QPD", 1, 4, 1, 4))
    with pytest.raises(PixQueryError, match=r"domain 9\.9 not known"):
        read_pix_response(build_pix_response(request, "AE", "AE", error=domain_error))
    with pytest.raises(PixQueryError, match="AR"):
        read_pix_response(build_pix_response(request, "AR", "AR", error=HL7Error("AR", "rejected", "207")))


def test_built_query_round_trips():
    text = build_pix_query(HOSP_A_NO, [NHS, "HOSPB"], query_tag="T1")
    message = parse_message(text)
    assert str(message.segment("MSH")(9)) == "QBP^Q23^QBP_Q21" and get(message, "MSH.F12") == "2.5"
    assert parse_pix_query(message) == PixQuery(HOSP_A_NO, (Identifiable("", NHS), Identifiable("", None, "HOSPB")))


# --- against the registry's listener -------------------------------------------------------------


@pytest.fixture
async def pix(registry_database_url, registry_pool) -> AsyncIterator[Registry]:
    async with running_feed(registry_database_url, affinity_domain_oid=NHS) as registry:
        async with registry.pool.acquire() as conn:
            await record_patient(conn, [NHS_NO, HOSP_A_NO, HOSP_B_NO], Demographics("Smith", "Jane"))
            await record_patient(conn, [Identifiable("A555", HOSP_A, "HOSPA")], Demographics("Only", "Local"))
            await record_patient(conn, [Identifiable("1111", NHS), Identifiable("A1", HOSP_A)], Demographics())
            await record_patient(conn, [Identifiable("2222", NHS)], Demographics())
            await merge_patients(conn, Identifiable("2222", NHS), Identifiable("1111", NHS))
        yield registry


async def query(registry: Registry, identifier: Identifiable, domains=None) -> list[Identifiable]:
    return await pix_query("127.0.0.1", registry.settings.mllp_port, identifier, domains, timeout=10)


async def test_found_with_and_without_domain_filter(pix):
    assert set(await query(pix, HOSP_A_NO)) == {NHS_NO, HOSP_B_NO}
    # The imaging source's use: hospital number -> NHS number.
    assert await query(pix, Identifiable("A100", HOSP_A), [NHS]) == [NHS_NO]
    assert await query(pix, NHS_NO, ["HOSPB"]) == [HOSP_B_NO]
    assert set(await query(pix, NHS_NO, [HOSP_A, HOSP_B])) == {HOSP_A_NO, HOSP_B_NO}
    # The merged patient's hospital number now maps to the surviving NHS number.
    assert await query(pix, Identifiable("A1", HOSP_A), [NHS]) == [Identifiable("2222", NHS)]


async def test_not_found_cases(pix):
    # Known identifier, nothing in the requested domain: AA / NF.
    assert await query(pix, Identifiable("A555", HOSP_A), [NHS]) == []
    async with connect(pix) as peer:
        rsp = await peer.send(qbp(f"A555^^^HOSPA&{HOSP_A}&ISO", f"^^^&{NHS}&ISO"))
        assert (get(rsp, "MSA.F1"), get(rsp, "QAK.F2"), get(rsp, "QAK.F1")) == ("AA", "NF", "TAG1")
        for segment in ("PID", "ERR"):
            with pytest.raises(KeyError):
                rsp.segment(segment)

        # Unknown identifier in a known domain (case 3), unknown domain (case 4), merged identifier.
        for qpd3, component, words in [
            (f"NOPE^^^HOSPA&{HOSP_A}&ISO", "1", "is not known"),
            (f"A100^^^&{OTHER_AUTHORITY}&ISO", "4", "assigning authority"),
            (f"1111^^^&{NHS}&ISO", "1", "merged"),
        ]:
            rsp = await peer.send(qbp(qpd3))
            assert (get(rsp, "MSA.F1"), get(rsp, "QAK.F2")) == ("AE", "AE")
            assert str(rsp.segment("ERR")(2)) == f"QPD^1^3^1^{component}"
            assert get(rsp, "ERR.F3.R1.C1") == "204" and words in get(rsp, "ERR.F8")
            with pytest.raises(KeyError):
                rsp.segment("PID")

        # Unknown requested domain (case 5): its repetition is named.
        rsp = await peer.send(qbp(f"A100^^^HOSPA&{HOSP_A}&ISO", f"^^^&{NHS}&ISO~^^^&{OTHER_AUTHORITY}&ISO"))
        assert (get(rsp, "MSA.F1"), get(rsp, "QAK.F2"), str(rsp.segment("ERR")(2))) == ("AE", "AE", "QPD^1^4^2^4")

        # A 2.3.1 query is rejected: ITI-9 is HL7 2.5.
        rsp = await peer.send(qbp(f"A100^^^HOSPA&{HOSP_A}&ISO", version="2.3.1"))
        assert (get(rsp, "MSA.F1"), get(rsp, "ERR.F1.R1.C4.S1")) == ("AR", "203")

    assert await query(pix, Identifiable("NOPE", HOSP_A)) == []
    assert await query(pix, Identifiable("1111", NHS)) == []
    with pytest.raises(PixQueryError, match=OTHER_AUTHORITY.replace(".", r"\.")):
        await query(pix, HOSP_A_NO, [OTHER_AUTHORITY])


async def test_affinity_domain_is_recognised_without_patients(registry_database_url, registry_pool):
    async with running_feed(registry_database_url, affinity_domain_oid=NHS) as registry:
        async with registry.pool.acquire() as conn:
            await record_patient(conn, [HOSP_A_NO], Demographics())
        assert await query(registry, HOSP_A_NO, [NHS]) == []


async def test_client_errors_are_pix_query_errors():
    with pytest.raises(PixQueryError, match="failed"):
        await pix_query("127.0.0.1", free_port(), HOSP_A_NO, timeout=5)
