"""Stored query parameter syntax and checks (registry.stored_query.params / .request): pure, no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from ihe.errors import SEVERITY_WARNING, XDSError
from ihe.soap import SoapFault
from ihe.xml import parse_xml
from registry.stored_query.params import (
    ParamSpec,
    Scalar,
    SlotValues,
    ValueSyntaxError,
    ValueType,
    canonical_patient_id,
    parse_parameters,
    parse_value,
)
from registry.stored_query.queries import FIND_DOCUMENTS, GET_DOCUMENTS, STORED_QUERIES
from registry.stored_query.request import ReturnType, parse_adhoc_query_request
from tests.messages import stored_query_request

PID = "P1^^^&1.3.6.1.4.1.21367.13.20.1000&ISO"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"


# --- value syntax -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "items", "is_list"), [
    ("'abc'", [Scalar("abc", True)], False),
    ("  'a b'  ", [Scalar("a b", True)], False),
    ("'O''Brien'", [Scalar("O'Brien", True)], False),
    ("''''", [Scalar("'", True)], False),
    ("''", [Scalar("", True)], False),
    ("20240105", [Scalar("20240105", False)], False),
    ("('a')", [Scalar("a", True)], True),
    ("('a','b')", [Scalar("a", True), Scalar("b", True)], True),
    ("( 'a' ,\n 'b,c' )", [Scalar("a", True), Scalar("b,c", True)], True),
    ("('it''s', 'x)')", [Scalar("it's", True), Scalar("x)", True)], True),
    ("(1, 2)", [Scalar("1", False), Scalar("2", False)], True),
    ("()", [], True),
])
def test_value_syntax(text, items, is_list):
    assert parse_value(text) == (items, is_list)


@pytest.mark.parametrize("text", [
    "abc",  # unquoted string
    "'abc",  # unterminated
    "('a','b'",  # unclosed list
    "('a' 'b')",  # missing comma
    "'a','b'",  # list without parentheses
    "('a',)",  # trailing comma
    "('a') x",  # trailing text
    '"abc"',  # double quotes are not the syntax
    "'a'b'",  # stray quote
    "",
])
def test_value_syntax_errors(text):
    with pytest.raises(ValueSyntaxError):
        parse_value(text)


# --- conversion and parameter rules -----------------------------------------------------------------


SPECS = (
    ParamSpec("$Pid", ValueType.PATIENT_ID, required=True),
    ParamSpec("$Status", ValueType.STRING, required=True, multiple=True),
    ParamSpec("$Code", ValueType.CODE, multiple=True),
    ParamSpec("$Event", ValueType.CODE, and_or=True),
    ParamSpec("$From", ValueType.TIME),
    ParamSpec("$Level", ValueType.INTEGER, allowed=frozenset({"1", "2"})),
    ParamSpec("$Uuid", ValueType.UUID, multiple=True),
    ParamSpec("$Single", ValueType.STRING),
)


def slots(**values) -> list[SlotValues]:
    """Slots from keyword arguments: a str is one Value, a tuple several Values, a list several Slots."""
    out = []
    for name, value in values.items():
        groups = value if isinstance(value, list) else [value]
        for g in groups:
            out.append(SlotValues(f"${name}", g if isinstance(g, tuple) else (g,)))
    return out


def parse(**values):
    return parse_parameters(SPECS, (), slots(**values))


def codes_of(exc: pytest.ExceptionInfo) -> list[str]:
    return [e.code for e in exc.value.errors]


def test_conversions():
    u = uuid.uuid4()
    p = parse(Pid=f"'{PID}'", Status=f"('{APPROVED}')", Code="('c1^^^s1','c2^^^s2')",
              Event=["('e1^^^s')", "('e2^^^s','e3^^^s')"], From="200412252300", Level="1",
              Uuid=f"('urn:uuid:{u}')", Single="'x'")
    assert p.get("$Pid") == [PID]
    assert p.get("$Status") == [APPROVED]
    assert p.get("$Code") == ["c1^^^s1", "c2^^^s2"]
    assert p.get("$Event") == [["e1^^^s"], ["e2^^^s", "e3^^^s"]]  # AND of ORs
    assert p.get("$From") == datetime(2004, 12, 25, 23, 0, tzinfo=UTC)
    assert p.get("$Level") == 1
    assert p.get("$Uuid") == [u]
    assert p.get("$Single") == "x"
    assert p.warnings == []


def test_codes_in_the_hl7_ce_form_are_the_same_codes():
    """NIST toolkit and consumers send 'code^^scheme' (CE, text empty or not); the key is 'code^^^scheme'."""
    p = parse(Pid=f"'{PID}'", Status=f"('{APPROVED}')", Code="('c1^^s1','c2^Text^s2','c3^^^s3')",
              Event=["('e1^^s')", "('e2^^^s','e3^^s')"])
    assert p.get("$Code") == ["c1^^^s1", "c2^^^s2", "c3^^^s3"]
    assert p.get("$Event") == [["e1^^^s"], ["e2^^^s", "e3^^^s"]]


def test_values_split_over_several_value_elements_are_one_or_list():
    p = parse(Pid=f"'{PID}'", Status=(f"('{APPROVED}')", "('urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated')"))
    assert p.get("$Status") == [APPROVED, "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"]


def test_multi_valued_parameter_accepts_a_bare_value_and_single_accepts_a_list_of_one():
    p = parse(Pid=f"('{PID}')", Status=f"'{APPROVED}'")
    assert p.get("$Pid") == [PID]
    assert p.get("$Status") == [APPROVED]


def test_patient_id_forms():
    assert canonical_patient_id("X^^^&1.2.3&ISO") == ["X^^^&1.2.3&ISO"]
    assert canonical_patient_id("X^^^NHS&1.2.3&ISO") == ["X^^^&1.2.3&ISO", "X^^^NHS&1.2.3&ISO"]
    for bad in ("X", "X^^^&&ISO", "X^^^NHS", "^^^&1.2.3&ISO", "X^^^&1.2.3&DNS"):
        with pytest.raises(ValueError):
            canonical_patient_id(bad)


def test_missing_required_parameters():
    with pytest.raises(XDSError) as exc:
        parse(Code="('c^^^s')")
    assert codes_of(exc) == ["XDSStoredQueryMissingParam", "XDSStoredQueryMissingParam"]
    assert "$Pid" in exc.value.errors[0].context and "$Status" in exc.value.errors[1].context


def test_empty_slot_counts_as_missing():
    with pytest.raises(XDSError) as exc:
        parse(Pid=f"'{PID}'", Status="()")
    assert codes_of(exc) == ["XDSStoredQueryMissingParam"]


@pytest.mark.parametrize("values", [
    {"Single": "('a','b')"},  # a list of two for a single-valued parameter
    {"Single": ("'a'", "'b'")},  # two Value elements
    {"Single": ["'a'", "'b'"]},  # two Slots
    {"Code": ["('a^^^s')", "('b^^^s')"]},  # two Slots of a parameter without AND semantics
])
def test_param_number(values):
    with pytest.raises(XDSError) as exc:
        parse(Pid=f"'{PID}'", Status=f"('{APPROVED}')", **values)
    assert codes_of(exc) == ["XDSStoredQueryParamNumber"]


@pytest.mark.parametrize(("values", "needle"), [
    ({"Pid": "'not-a-cx'"}, "$Pid"),
    ({"Pid": "P1^^^&1.2&ISO"}, "$Pid"),  # unquoted
    ({"Code": "('nocodescheme')"}, "code^^^codingScheme"),
    ({"Code": "('a^b^^^s')"}, "$Code"),
    ({"Code": "('a^^')"}, "$Code"),
    ({"Code": "('^^s')"}, "$Code"),
    ({"Code": "('a^x^y^s')"}, "$Code"),
    ({"From": "2004-12-25"}, "$From"),
    ({"From": "20041325"}, "DTM"),  # month 13
    ({"Level": "3"}, "$Level"),
    ({"Level": "'1'"}, "integer"),
    ({"Uuid": "('1234')"}, "urn:uuid"),
    ({"Status": "(urn:x)"}, "malformed"),
])
def test_malformed_values_are_registry_errors(values, needle):
    base = {"Pid": f"'{PID}'", "Status": f"('{APPROVED}')"}
    with pytest.raises(XDSError) as exc:
        parse(**{**base, **values})
    assert codes_of(exc) == ["XDSRegistryError"]
    assert needle in exc.value.errors[0].context


def test_several_faults_are_all_reported():
    with pytest.raises(XDSError) as exc:
        parse(Pid="'bad'", Single=("'a'", "'b'"))
    assert sorted(codes_of(exc)) == ["XDSRegistryError", "XDSStoredQueryMissingParam", "XDSStoredQueryParamNumber"]


def test_unknown_parameter_is_a_warning_and_names_match_case_insensitively():
    p = parse_parameters(SPECS, (), [SlotValues("$PID", (f"'{PID}'",)), SlotValues("$status", (f"('{APPROVED}')",)),
                                     SlotValues("$Bogus", ("'x'",))])
    assert p.get("$Pid") == [PID] and p.get("$Status") == [APPROVED]
    assert [(w.code, w.severity) for w in p.warnings] == [("XDSRegistryError", SEVERITY_WARNING)]
    assert "$Bogus" in p.warnings[0].context


def test_alternatives_exactly_one():
    query = STORED_QUERIES[GET_DOCUMENTS]
    u = f"urn:uuid:{uuid.uuid4()}"
    ok = parse_parameters(query.params, query.alternatives, [SlotValues("$XDSDocumentEntryUniqueId", ("('1.2.3')",))])
    assert ok.get("$XDSDocumentEntryUniqueId") == ["1.2.3"]
    with pytest.raises(XDSError) as exc:
        parse_parameters(query.params, query.alternatives, [])
    assert codes_of(exc) == ["XDSStoredQueryMissingParam"]
    with pytest.raises(XDSError) as exc:
        parse_parameters(query.params, query.alternatives, [
            SlotValues("$XDSDocumentEntryUniqueId", ("('1.2.3')",)),
            SlotValues("$XDSDocumentEntryEntryUUID", (f"('{u}')",)),
        ])
    assert codes_of(exc) == ["XDSStoredQueryParamNumber"]


def test_every_stored_query_of_the_tf_is_defined():
    names = {q.name for q in STORED_QUERIES.values()}
    assert names == {
        "FindDocuments", "FindDocumentsByReferenceId", "FindSubmissionSets", "FindFolders", "GetAll",
        "GetDocuments", "GetFolders", "GetAssociations", "GetDocumentsAndAssociations", "GetSubmissionSets",
        "GetSubmissionSetAndContents", "GetFolderAndContents", "GetFoldersForDocument", "GetRelatedDocuments",
    }
    find_documents = {p.name: p for p in STORED_QUERIES[FIND_DOCUMENTS].params}
    # Only these two DocumentEntry code parameters take AND semantics (ITI TF-2a 3.18.4.1.2.3.7.1).
    assert {n for n, p in find_documents.items() if p.and_or} == {
        "$XDSDocumentEntryEventCodeList", "$XDSDocumentEntryConfidentialityCode"}
    assert {n for n, p in find_documents.items() if p.required} == {
        "$XDSDocumentEntryPatientId", "$XDSDocumentEntryStatus"}


# --- the AdhocQueryRequest element -------------------------------------------------------------------


def test_request_parsing():
    xml = stored_query_request(FIND_DOCUMENTS, {"$XDSDocumentEntryPatientId": f"'{PID}'",
                                                "$XDSDocumentEntryEventCodeList": [["('a^^^s')"], ["('b^^^s')"]]},
                               "ObjectRef", home_community_id="urn:oid:1.2.3")
    request = parse_adhoc_query_request(parse_xml(xml))
    assert request.query_id == FIND_DOCUMENTS
    assert request.return_type is ReturnType.OBJECT_REF
    assert request.home == "urn:oid:1.2.3"
    assert request.slots == (
        SlotValues("$XDSDocumentEntryPatientId", (f"'{PID}'",)),
        SlotValues("$XDSDocumentEntryEventCodeList", ("('a^^^s')",)),
        SlotValues("$XDSDocumentEntryEventCodeList", ("('b^^^s')",)),
    )


@pytest.mark.parametrize(("xml", "needle"), [
    (stored_query_request(FIND_DOCUMENTS, {}, "RegistryObject"), "returnType"),
    (stored_query_request(FIND_DOCUMENTS, {}).replace(b"<query:ResponseOption", b"<query:Other"), "ResponseOption"),
    (stored_query_request("", {}), "no id"),
])
def test_malformed_requests_are_registry_errors(xml, needle):
    with pytest.raises(XDSError) as exc:
        parse_adhoc_query_request(parse_xml(xml))
    assert [e.code for e in exc.value.errors] == ["XDSRegistryError"]
    assert needle in exc.value.errors[0].context


def test_a_body_that_is_no_query_is_a_soap_fault():
    with pytest.raises(SoapFault) as exc:
        parse_adhoc_query_request(parse_xml(b'<x:SubmitObjectsRequest xmlns:x="urn:x"/>'))
    assert exc.value.code == "Sender"
