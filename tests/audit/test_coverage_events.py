"""The audit records added for issue 12: the requesting side of SOAP transactions, QIDO-RS searches and
refused XUA assertions, each read back by the audit record repository's parser (what search finds)."""

from __future__ import annotations

from lxml import etree

from consumer.client.retrieve import DocumentRequest, retrieve_request
from ihe.audit import events
from ihe.audit.client import exchange_outcome
from ihe.audit.messages import OUTCOME_MINOR, OUTCOME_SERIOUS, OUTCOME_SUCCESS, audit_message_bytes
from ihe.audit.repository import parse_record
from ihe.audit.syslog import build_syslog
from ihe.namespaces import ACTION_ITI18, ACTION_ITI41, ACTION_ITI43, ACTION_RAD69
from ihe.xml import parse_xml
from ihe.xua.model import FAILED_AUTHENTICATION, INVALID_SECURITY_TOKEN, SNOMED_CT
from tests.messages import FIND_DOCUMENTS, new_patient_id, provide_and_register_request, quoted, stored_query_request
from tests.xua_keys import CLINICIAN, PORTAL_ISSUER


def stored(event):
    """The audit record repository's row for ``event`` (as xds-audit stores it)."""
    message = build_syslog(audit_message_bytes(event), hostname="h", app_name="t", procid="1", origin="o", seq=1)
    row = parse_record(message, "127.0.0.1")
    assert row.parse_error is None, row.parse_error
    return row, etree.fromstring(row.message)


def roles(root) -> dict[str, str]:
    """UserID -> its RoleIDCode (or '-' for the human user) of each ActiveParticipant."""
    return {p.get("UserID"): (p.find("RoleIDCode").get("csd-code") if p.find("RoleIDCode") is not None else "-")
            for p in root.findall("ActiveParticipant")}


def test_the_consumer_records_its_stored_query_as_its_source_with_the_user_and_patient():
    cx = new_patient_id()
    body = parse_xml(stored_query_request(FIND_DOCUMENTS, {"$XDSDocumentEntryPatientId": quoted(cx)}))
    event = events.client_soap_event(ACTION_ITI18, body, source_id="portal", client_id="http://portal",
                                      client_nap="portal-host", server_id="http://registry/registry",
                                      server_nap="registry", outcome=OUTCOME_SUCCESS, user="Dr Ada<ada>")
    row, root = stored(event)
    assert (row.event_id, row.event_type, row.event_action) == ("110112", "ITI-18", "E")
    assert row.patient_ids == [cx]
    assert FIND_DOCUMENTS in row.object_ids  # the query, with the request itself base64 in ParticipantObjectQuery
    assert root.find("ParticipantObjectIdentification/ParticipantObjectQuery") is not None
    assert roles(root) == {"http://portal": "110153", "http://registry/registry": "110152", "Dr Ada<ada>": "-"}
    assert row.user_id == "http://portal | Dr Ada<ada>"


def test_the_consumer_records_a_retrieve_as_an_import_from_the_repository():
    body = retrieve_request([DocumentRequest("1.2.3", "1.2.3.4")])
    event = events.client_soap_event(ACTION_ITI43, body, source_id="portal", client_id="http://portal",
                                      client_nap=None, server_id="http://repo", server_nap="repo",
                                      outcome=OUTCOME_SUCCESS, extra_objects=[events.patient(new_patient_id())])
    row, root = stored(event)
    assert (row.event_id, row.event_type, row.event_action) == ("110107", "ITI-43", "C")
    assert "1.2.3.4" in row.object_ids and len(row.patient_ids) == 1
    assert roles(root) == {"http://portal": "110152", "http://repo": "110153"}  # the repository is the source


def test_the_imaging_source_records_its_publication_as_rad68():
    cx = new_patient_id()
    built = provide_and_register_request(cx)
    body = parse_xml(built.xml)
    event = events.client_soap_event(ACTION_ITI41, body, source_id="imaging", client_id="HOSPA_XDSI",
                                      client_nap=None, server_id="http://repo", server_nap="repo",
                                      outcome=OUTCOME_SUCCESS, event_type=events.RAD68)
    row, _root = stored(event)
    assert (row.event_id, row.event_type, row.event_action) == ("110106", "RAD-68", "R")
    assert row.patient_ids == [cx]
    assert built.submission_set_unique_id in row.object_ids


def test_a_rad69_request_names_its_studies_and_the_exchange_outcome_is_read_from_the_answer():
    body = etree.fromstring(
        b'<iherad:RetrieveImagingDocumentSetRequest xmlns:iherad="urn:ihe:rad:xdsi-b:2009" '
        b'xmlns:xdsb="urn:ihe:iti:xds-b:2007"><iherad:StudyRequest studyInstanceUID="1.2.840.1">'
        b'<iherad:SeriesRequest seriesInstanceUID="1.2.840.1.1"><xdsb:DocumentRequest>'
        b"<xdsb:RepositoryUniqueId>1.2</xdsb:RepositoryUniqueId><xdsb:DocumentUniqueId>1.2.840.1.1.1"
        b"</xdsb:DocumentUniqueId></xdsb:DocumentRequest></iherad:SeriesRequest></iherad:StudyRequest>"
        b"</iherad:RetrieveImagingDocumentSetRequest>")
    event = events.client_soap_event(ACTION_RAD69, body, source_id="portal", client_id="http://portal",
                                      client_nap=None, server_id="http://img/rad69", server_nap="img",
                                      outcome=OUTCOME_SUCCESS)
    row, _ = stored(event)
    assert (row.event_id, row.event_type) == ("110107", "RAD-69")
    assert row.object_ids[:2] == ["1.2.840.1", "1.2.840.1.1.1"]
    failure = etree.fromstring(b'<r status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"/>')
    assert exchange_outcome(failure, None) == OUTCOME_MINOR
    assert exchange_outcome(None, OSError("refused")) == OUTCOME_SERIOUS


def test_a_qido_search_is_a_query_naming_the_patient_and_the_parameters():
    event = events.web_retrieve_event(
        "/dicomweb/studies", {"PatientID": "A123", "IssuerOfPatientID": "HOSPA", "ModalitiesInStudy": "CT"}, {},
        source_id="imaging", requestor_nap="10.0.0.1", server_id="http://img/dicomweb/studies", server_nap="img",
        outcome=OUTCOME_SUCCESS, user="Dr Ada<ada@portal>", user_role=events.Code("309343006", "SNOMED_CT", "Phys"))
    row, root = stored(event)
    assert (row.event_id, row.event_type, row.event_action) == ("110112", "RAD-129", "E")
    assert row.patient_ids == ["A123^^^HOSPA"]
    query = root.find("ParticipantObjectIdentification/ParticipantObjectQuery")
    assert b"ModalitiesInStudy=CT" in __import__("base64").b64decode(query.text)
    assert roles(root)["Dr Ada<ada@portal>"] == "309343006"
    within = events.web_retrieve_event("/dicomweb/studies/1.2.3/series", {}, {"study": "1.2.3"}, source_id="i",
                                       requestor_nap=None, server_id="s", server_nap=None, outcome=OUTCOME_SUCCESS)
    assert within.event_types[0].code == "RAD-129" and within.objects[0].object_id == "1.2.3"
    retrieve = events.web_retrieve_event("/dicomweb/studies/1.2.3/metadata", {}, {"study": "1.2.3"}, source_id="i",
                                         requestor_nap=None, server_id="s", server_nap=None, outcome=OUTCOME_SUCCESS)
    assert retrieve.event_types[0].code == "RAD-107"


def test_a_refused_assertion_is_a_security_alert_naming_who_claimed_what_where():
    event = events.xua_alert_event(reason="the assertion expired", code=INVALID_SECURITY_TOKEN,
                                   endpoint="/registry", remote="10.0.0.9", issuer=PORTAL_ISSUER,
                                   subject="ada", node="http://registry", node_nap="registry", source_id="registry")
    row, root = stored(event)
    assert (row.event_id, row.event_type, row.outcome) == ("110113", "110132", OUTCOME_MINOR)
    assert row.user_id == f"ada@{PORTAL_ISSUER}" and row.user_address == "10.0.0.9"
    assert row.object_ids == ["/registry"]
    assert "expired" in root.findtext("EventIdentification/EventOutcomeDescription")
    forged = events.xua_alert_event(reason="signature", code=FAILED_AUTHENTICATION, endpoint="/rad69", remote=None,
                                    issuer=None, subject=None, node="n", node_nap=None, source_id="s")
    assert forged.event_types[0].code == "110126" and forged.outcome == OUTCOME_SERIOUS


def test_the_xua_user_is_named_as_iti40_asks():
    from ihe.xua.model import XuaIdentity

    identity = XuaIdentity(issuer=PORTAL_ISSUER, assertion_id="_1", name_id=CLINICIAN.name_id,
                           subject_id=CLINICIAN.subject_id, organization="A", organization_id="urn:oid:1.2",
                           role=CLINICIAN.role, purpose_of_use=CLINICIAN.purpose_of_use, resource_id=None,
                           authn_context="x", not_on_or_after=None)
    user, role = events.xua_user(identity)
    assert user == f"Meredith Grey<dr.grey@hospa.example@{PORTAL_ISSUER}>"
    assert (role.code, role.system) == ("309343006", "SNOMED_CT")
    assert CLINICIAN.role.code_system == SNOMED_CT
    assert events.xua_user(None) == (None, None)
