"""ITI-18 parameter tables, query by query, against a real registry process over HTTP.

Written from the framework, not from registry/stored_query: ITI TF-2a 3.18.4.1.2.3.7.1-14 give,
for each stored query, its parameters, whether each is required (R) or optional (O), whether it
takes several values (M), and which take AND/OR semantics (several Slots of one name are ANDed,
the values of one Slot are ORed: $XDSDocumentEntryEventCodeList, $XDSDocumentEntryConfidentialityCode,
$XDSFolderCodeList). The NIST XDS toolkit's registry validation (validate_parm: required?,
multiple?, is code?, AND/OR?, alternatives) encodes the same tables. For every query:

- the answer with the required parameters only;
- each required parameter left out: XDSStoredQueryMissingParam (ITI TF-2a 3.18.4.1.3 / ITI TF-3
  Table 4.2.4.1-2; the NIST toolkit answers XDSRegistryError there: both are Failure);
- of a pair of alternatives (entryUUID or uniqueId): neither -> XDSStoredQueryMissingParam,
  both -> XDSStoredQueryParamNumber; several values for a single-valued parameter -> ParamNumber;
- each optional parameter narrowing the answer, with several values where M, and every coded
  parameter in both forms: 'code^^^codingScheme' (ITI TF-2a 3.18.4.1.2.3.4) and the HL7 CE form
  'code^^codingScheme' the NIST toolkit sends.

Messages are NIST-style (tests.messages); each case runs with returnType LeafClass and ObjectRef.
The data set is one patient with three submissions (one replacing a document) and a second
patient whose objects must never appear.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest

from ihe.errors import STATUS_FAILURE, STATUS_SUCCESS, parse_registry_response
from ihe.metadata.ebrim import read_object_refs, read_registry_objects
from ihe.metadata.model import Identifiable
from ihe.xml import parse_xml
from registry.patients import Demographics, record_patient
from tests import messages as m
from tests.conftest import REGISTRY_TABLES, start_registry_process

APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
APND = "urn:ihe:iti:2007:AssociationType:APND"
MISSING, NUMBER, ERROR = "XDSStoredQueryMissingParam", "XDSStoredQueryParamNumber", "XDSRegistryError"

# The second submission's DocumentEntry differs from the others in every coded attribute.
ALT_CLASS = m.Code("11488-4", "2.16.840.1.113883.6.1", "Consult note")
ALT_TYPE = m.Code("34117-2", "2.16.840.1.113883.6.1", "History and physical")
ALT_FORMAT = m.Code("urn:ihe:iti:xds-sd:pdf:2008", "1.3.6.1.4.1.19376.1.2.3", "Scanned PDF")
ALT_HCFT = m.Code("264358009", "2.16.840.1.113883.6.96", "General practice")
ALT_PRACTICE = m.Code("408443003", "2.16.840.1.113883.6.96", "General medical practice")
ALT_CONFIDENTIALITY = m.Code("R", "2.16.840.1.113883.5.25", "restricted")
ALT_EVENT = m.Code("MR", "1.2.840.10008.2.16.4", "Magnetic Resonance")
ALT_CONTENT_TYPE = m.Code("34133-9", "2.16.840.1.113883.6.1", "Summary of episode note")
ALT_FOLDER_CODE = m.Code("Referral", "1.3.6.1.4.1.21367.100.1", "Referral")
NOTHING = m.Code("no-such-code", "1.2.3.4.5.6")
ALT_SOURCE = "1.3.6.1.4.1.21367.2009.1.2.77"
REFERENCE_ID = "ACC-1^^^&1.2.826.0.1.999.3&ISO^urn:ihe:iti:xds:2013:accession"
OTHER_AUTHOR = m.TestAuthor(person="^Other^Author^^^", institutions=("Elsewhere",))
OTHER_SUBMITTER = m.TestAuthor(person="^Other^Submitter^^^")


def key(code: m.Code) -> str:
    """code^^^codingScheme, the form of ITI TF-2a 3.18.4.1.2.3.4."""
    return code.key


def ce(code: m.Code) -> str:
    """code^^codingScheme, the HL7 CE form (NIST toolkit)."""
    return f"{code.code}^^{code.scheme}"


# --- the data set ---------------------------------------------------------------------------------


@dataclass
class Data:
    pid: str
    other_pid: str
    ids: dict[str, str]  # name -> entryUUID (documents, sets, folders, associations)
    uids: dict[str, str]  # name -> uniqueId

    def __getattr__(self, name: str) -> str:
        return self.ids[name]

    @property
    def universe(self) -> set[str]:
        return set(self.ids.values())


async def _post(session: aiohttp.ClientSession, url: str, action: str, envelope: bytes):
    headers = {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{action}"'}
    async with session.post(url, data=envelope, headers=headers) as response:
        assert response.status == 200, await response.text()
        return parse_xml(await response.read())[-1][0]


async def _register(session, url, pid, **kwargs) -> m.BuiltSubmission:
    envelope, built = m.register_request(pid, use_uuids=True, **kwargs)
    response = await _post(session, url, m.ACTION_ITI42, envelope)
    status, errors = parse_registry_response(response)
    assert status == STATUS_SUCCESS, [(e.code, e.context) for e in errors]
    return built


def _members(built: m.BuiltSubmission, prefix: str, ids: dict[str, str]) -> None:
    """Name the associations of a submission: '<prefix>:<source name>-><target name>'."""
    names = {v: k for k, v in ids.items()}
    for aid, (_atype, source, target) in built.associations.items():
        ids[f"{prefix}:{names.get(source, source)}->{names.get(target, target)}"] = aid
        names[aid] = f"({names.get(source, source)}->{names.get(target, target)})"


@pytest.fixture(scope="module")
async def data(registry_database_url):
    conn = await asyncpg.connect(registry_database_url)
    try:
        await conn.execute(f"TRUNCATE {REGISTRY_TABLES} RESTART IDENTITY CASCADE")
        pid, other = m.new_patient_id(), m.new_patient_id()
        for p in (pid, other):
            await record_patient(conn, [Identifiable.parse_cx(p)], Demographics(family="Tables"))
    finally:
        await conn.close()
    service = start_registry_process(registry_database_url)
    ids: dict[str, str] = {}
    uids: dict[str, str] = {}
    try:
        url = service.url
        async with aiohttp.ClientSession() as session:
            s1 = await _register(session, url, pid, documents=2, folder=True, reference_ids=[REFERENCE_ID],
                                 submission_time="20240105100000")
            ids.update(A1=s1.document_ids[0], A2=s1.document_ids[1], SS1=s1.submission_set_id, F1=s1.folder_id)
            uids.update(A1=s1.document_unique_ids[0], A2=s1.document_unique_ids[1],
                        SS1=s1.submission_set_unique_id, F1=s1.folder_unique_id)
            _members(s1, "S1", ids)
            s2 = await _register(
                session, url, pid, folder=True, submission_time="20250601130000", source_id=ALT_SOURCE,
                class_code=ALT_CLASS, type_code=ALT_TYPE, format_code=ALT_FORMAT,
                healthcare_facility_type_code=ALT_HCFT,
                practice_setting_code=ALT_PRACTICE, confidentiality_codes=(m.CONFIDENTIALITY_CODE, ALT_CONFIDENTIALITY),
                event_codes=(m.EVENT_CODES[0], ALT_EVENT), content_type_code=ALT_CONTENT_TYPE,
                folder_codes=(m.FOLDER_CODE, ALT_FOLDER_CODE), authors=(OTHER_AUTHOR,),
                submission_set_authors=(OTHER_SUBMITTER,), creation_time="20250601120000",
                service_start_time="202506011000", service_stop_time="202506011100")
            ids.update(B=s2.document_id, SS2=s2.submission_set_id, F2=s2.folder_id)
            uids.update(B=s2.document_unique_id, SS2=s2.submission_set_unique_id, F2=s2.folder_unique_id)
            _members(s2, "S2", ids)
            s3 = await _register(session, url, pid, replaces=ids["A1"], submission_time="20260101000000")
            ids.update(C=s3.document_id, SS3=s3.submission_set_id)
            uids.update(C=s3.document_unique_id, SS3=s3.submission_set_unique_id)
            _members(s3, "S3", ids)
            await _name_folder_memberships_of_replacement(registry_database_url, ids, "C", "S3", "SS3")
            s5 = await _register(session, url, other, folder=True)
            ids.update(Q=s5.document_id, SSQ=s5.submission_set_id, FQ=s5.folder_id)
            _members(s5, "S5", ids)
        yield Data(pid, other, ids, uids), url
    finally:
        service.stop()


async def _name_folder_memberships_of_replacement(url: str, ids: dict[str, str], doc: str, prefix: str,
                                                   ss: str) -> None:
    """Name the associations the registry adds when a replacement joins its original's Folders
    (ITI TF-3 4.2.2.2.3): Folder->replacement and the SubmissionSet's HasMember to that one."""
    names = {v: k for k, v in ids.items()}
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id, source FROM association WHERE target = $1 AND type = $2",
                                ids[doc].removeprefix("urn:uuid:"), m.HAS_MEMBER)
        for row in rows:
            source = f"urn:uuid:{row['source']}"
            if source == ids[ss]:
                continue
            folder = names[source]
            membership = f"urn:uuid:{row['id']}"
            ids[f"{prefix}:{folder}->{doc}"] = membership
            inner = await conn.fetchval("SELECT id FROM association WHERE target = $1", row["id"])
            ids[f"{prefix}:{ss}->({folder}->{doc})"] = f"urn:uuid:{inner}"
    finally:
        await conn.close()


# --- the cases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    query: str
    name: str
    params: Callable[[Data], dict[str, Any]]
    #: the names of exactly the objects answered (of the data set), or an error code
    expect: Callable[[Data], set[str]] | str

    @property
    def id(self) -> str:
        return f"{self.query}-{self.name}"


def q(*values: str) -> str:
    return m.in_list(*values)


def one(value: str) -> str:
    return m.quoted(value)


def names(*n: str) -> Callable[[Data], set[str]]:
    return lambda d: set(n)


CASES: list[Case] = []


def case(query: str, name: str, params, expect) -> None:
    CASES.append(Case(query, name, params, expect))


# 3.18.4.1.2.3.7.1 FindDocuments: PatientId R; Status R M; codes O M (event, confidentiality AND/OR);
# times O; AuthorPerson O M; Type O M.
FD = m.FIND_DOCUMENTS


def fd(d: Data, **extra) -> dict[str, Any]:
    return {"$XDSDocumentEntryPatientId": one(d.pid), "$XDSDocumentEntryStatus": q(APPROVED), **extra}


E = "$XDSDocumentEntry"
case("FindDocuments", "required-only", fd, names("A2", "B", "C"))
case("FindDocuments", "missing-patient", lambda d: {f"{E}Status": q(APPROVED)}, MISSING)
case("FindDocuments", "missing-status", lambda d: {f"{E}PatientId": one(d.pid)}, MISSING)
case("FindDocuments", "patient-is-single-valued", lambda d: fd(d, **{f"{E}PatientId": q(d.pid, d.other_pid)}), NUMBER)
case("FindDocuments", "status-multiple", lambda d: fd(d, **{f"{E}Status": q(APPROVED, DEPRECATED)}),
     names("A1", "A2", "B", "C"))
case("FindDocuments", "status-deprecated", lambda d: fd(d, **{f"{E}Status": q(DEPRECATED)}), names("A1"))
# Status values are ebRIM StatusType URNs (3.18.4.1.2.3.6): a short form would match nothing, silently.
case("FindDocuments", "status-short-form", lambda d: fd(d, **{f"{E}Status": q("Approved")}), ERROR)
case("FindDocuments", "status-unknown", lambda d: fd(d, **{f"{E}Status": q(APPROVED, "urn:x:Approved")}), ERROR)
case("FindDocuments", "status-never-stored", lambda d: fd(
    d, **{f"{E}Status": q("urn:oasis:names:tc:ebxml-regrep:StatusType:Withdrawn")}), names())
case("FindDocuments", "other-patient", lambda d: fd(d, **{f"{E}PatientId": one(d.other_pid)}), names("Q"))
for param, default, alt in (
    ("ClassCode", m.CLASS_CODE, ALT_CLASS),
    ("TypeCode", m.TYPE_CODE, ALT_TYPE),
    ("PracticeSettingCode", m.PRACTICE_SETTING_CODE, ALT_PRACTICE),
    ("HealthcareFacilityTypeCode", m.HCFT_CODE, ALT_HCFT),
    ("FormatCode", m.FORMAT_CODE, ALT_FORMAT),
):
    for form in (key, ce):
        case("FindDocuments", f"{param}-{form.__name__}",
             lambda d, p=param, c=alt, f=form: fd(d, **{f"{E}{p}": q(f(c))}), names("B"))
        case("FindDocuments", f"{param}-{form.__name__}-default",
             lambda d, p=param, c=default, f=form: fd(d, **{f"{E}{p}": q(f(c))}), names("A2", "C"))
    case("FindDocuments", f"{param}-multiple-mixed-forms",
         lambda d, p=param, a=default, b=alt: fd(d, **{f"{E}{p}": q(key(a), ce(b))}), names("A2", "B", "C"))
    case("FindDocuments", f"{param}-no-match", lambda d, p=param: fd(d, **{f"{E}{p}": q(ce(NOTHING))}), names())
    case("FindDocuments", f"{param}-not-and-or",  # two Slots: AND semantics are not defined for this one
         lambda d, p=param, a=default, b=alt: fd(d, **{f"{E}{p}": [[q(key(a))], [q(key(b))]]}), NUMBER)
    case("FindDocuments", f"{param}-malformed", lambda d, p=param: fd(d, **{f"{E}{p}": q("nocode")}), ERROR)
for form in (key, ce):
    n = form.__name__
    case("FindDocuments", f"ConfidentialityCode-{n}", lambda d, f=form: fd(
        d, **{f"{E}ConfidentialityCode": q(f(m.CONFIDENTIALITY_CODE))}), names("A2", "B", "C"))
    case("FindDocuments", f"ConfidentialityCode-{n}-and", lambda d, f=form: fd(
        d, **{f"{E}ConfidentialityCode": [[q(f(m.CONFIDENTIALITY_CODE))], [q(f(ALT_CONFIDENTIALITY))]]}),
        names("B"))
    case("FindDocuments", f"ConfidentialityCode-{n}-and-or", lambda d, f=form: fd(
        d, **{f"{E}ConfidentialityCode": [[q(f(m.CONFIDENTIALITY_CODE))], [q(f(NOTHING), f(ALT_CONFIDENTIALITY))]]}),
        names("B"))
    case("FindDocuments", f"EventCodeList-{n}", lambda d, f=form: fd(
        d, **{f"{E}EventCodeList": q(f(m.EVENT_CODES[0]))}), names("A2", "B", "C"))
    case("FindDocuments", f"EventCodeList-{n}-or", lambda d, f=form: fd(
        d, **{f"{E}EventCodeList": q(f(m.EVENT_CODES[1]), f(ALT_EVENT))}), names("A2", "B", "C"))
    case("FindDocuments", f"EventCodeList-{n}-and", lambda d, f=form: fd(
        d, **{f"{E}EventCodeList": [[q(f(m.EVENT_CODES[0]))], [q(f(m.EVENT_CODES[1]))]]}), names("A2", "C"))
    case("FindDocuments", f"EventCodeList-{n}-and-none", lambda d, f=form: fd(
        d, **{f"{E}EventCodeList": [[q(f(ALT_EVENT))], [q(f(m.EVENT_CODES[1]))]]}), names())
# Times: From inclusive, To exclusive (3.18.4.1.2.3.7.1); creation 20240105083000 (A2, C) and 20250601120000 (B).
for attr, early, late in (("CreationTime", "20240105083000", "20250601120000"),
                          ("ServiceStartTime", "200401050800", "202506011000"),
                          ("ServiceStopTime", "200401050830", "202506011100")):
    case("FindDocuments", f"{attr}From", lambda d, a=attr, t=late: fd(d, **{f"{E}{a}From": t}), names("B"))
    case("FindDocuments", f"{attr}To", lambda d, a=attr, t=late: fd(d, **{f"{E}{a}To": t}), names("A2", "C"))
    case("FindDocuments", f"{attr}From-To", lambda d, a=attr, t=early: fd(
        d, **{f"{E}{a}From": t, f"{E}{a}To": str(int(t) + 1)}), names("A2", "C"))
    case("FindDocuments", f"{attr}From-single-valued", lambda d, a=attr, t=early: fd(
        d, **{f"{E}{a}From": f"({t}, {t})"}), NUMBER)
    case("FindDocuments", f"{attr}To-malformed", lambda d, a=attr: fd(d, **{f"{E}{a}To": "'2024-01-05'"}), ERROR)
case("FindDocuments", "AuthorPerson", lambda d: fd(d, **{f"{E}AuthorPerson": q(OTHER_AUTHOR.person)}), names("B"))
case("FindDocuments", "AuthorPerson-wildcard", lambda d: fd(d, **{f"{E}AuthorPerson": q("%Smitty%")}),
     names("A2", "C"))
case("FindDocuments", "AuthorPerson-multiple", lambda d: fd(d, **{f"{E}AuthorPerson": q("%Smitty%", "^Other%")}),
     names("A2", "B", "C"))
# This registry has no On-Demand Documents option (it refuses such entries): on-demand finds nothing.
case("FindDocuments", "Type-on-demand", lambda d: fd(d, **{f"{E}Type": q(m.ON_DEMAND)}), names())
case("FindDocuments", "Type-multiple", lambda d: fd(d, **{f"{E}Type": q(m.STABLE, m.ON_DEMAND)}),
     names("A2", "B", "C"))
case("FindDocuments", "Type-unknown", lambda d: fd(d, **{f"{E}Type": q("Stable")}), ERROR)
case("FindDocuments", "all-filters", lambda d: fd(d, **{
    f"{E}ClassCode": q(ce(ALT_CLASS)), f"{E}TypeCode": q(ce(ALT_TYPE)), f"{E}PracticeSettingCode": q(ce(ALT_PRACTICE)),
    f"{E}HealthcareFacilityTypeCode": q(ce(ALT_HCFT)), f"{E}FormatCode": q(ce(ALT_FORMAT)),
    f"{E}EventCodeList": [[q(ce(ALT_EVENT))], [q(key(m.EVENT_CODES[0]))]],
    f"{E}ConfidentialityCode": q(ce(ALT_CONFIDENTIALITY)), f"{E}CreationTimeFrom": "2025",
    f"{E}CreationTimeTo": "2026", f"{E}ServiceStartTimeFrom": "2025", f"{E}ServiceStartTimeTo": "2026",
    f"{E}ServiceStopTimeFrom": "2025", f"{E}ServiceStopTimeTo": "2026", f"{E}AuthorPerson": q("^Other%"),
    f"{E}Type": q(m.STABLE)}), names("B"))

# 3.18.4.1.2.3.7.14 FindDocumentsByReferenceId: FindDocuments' parameters and ReferenceIdList R M.
case("FindDocumentsByReferenceId", "required-only", lambda d: fd(d, **{f"{E}ReferenceIdList": q(REFERENCE_ID)}),
     names("A2"))
case("FindDocumentsByReferenceId", "missing-reference-id", fd, MISSING)
case("FindDocumentsByReferenceId", "missing-patient", lambda d: {
    f"{E}Status": q(APPROVED), f"{E}ReferenceIdList": q(REFERENCE_ID)}, MISSING)
case("FindDocumentsByReferenceId", "reference-id-multiple", lambda d: fd(
    d, **{f"{E}ReferenceIdList": q("nothing^^^&1.2&ISO", REFERENCE_ID), f"{E}Status": q(APPROVED, DEPRECATED)}),
    names("A1", "A2"))
case("FindDocumentsByReferenceId", "with-class-code-ce", lambda d: fd(
    d, **{f"{E}ReferenceIdList": q(REFERENCE_ID), f"{E}ClassCode": q(ce(m.CLASS_CODE))}), names("A2"))
case("FindDocumentsByReferenceId", "with-event-code-and", lambda d: fd(
    d, **{f"{E}ReferenceIdList": q(REFERENCE_ID),
          f"{E}EventCodeList": [[q(ce(m.EVENT_CODES[0]))], [q(ce(ALT_EVENT))]]}), names())

# 3.18.4.1.2.3.7.2 FindSubmissionSets: PatientId R; SourceId O M; SubmissionTimeFrom/To O;
# AuthorPerson O (single); ContentType O M; Status R M.
S = "$XDSSubmissionSet"


def fs(d: Data, **extra) -> dict[str, Any]:
    return {f"{S}PatientId": one(d.pid), f"{S}Status": q(APPROVED), **extra}


case("FindSubmissionSets", "required-only", fs, names("SS1", "SS2", "SS3"))
case("FindSubmissionSets", "missing-patient", lambda d: {f"{S}Status": q(APPROVED)}, MISSING)
case("FindSubmissionSets", "missing-status", lambda d: {f"{S}PatientId": one(d.pid)}, MISSING)
case("FindSubmissionSets", "status-short-form", lambda d: fs(d, **{f"{S}Status": q("Approved")}), ERROR)
case("FindSubmissionSets", "SourceId", lambda d: fs(d, **{f"{S}SourceId": q(ALT_SOURCE)}), names("SS2"))
case("FindSubmissionSets", "SourceId-multiple", lambda d: fs(d, **{f"{S}SourceId": q(ALT_SOURCE, m.TEST_SOURCE_ID)}),
     names("SS1", "SS2", "SS3"))
case("FindSubmissionSets", "SubmissionTime", lambda d: fs(d, **{f"{S}SubmissionTimeFrom": "20250601130000",
                                                               f"{S}SubmissionTimeTo": "2026"}), names("SS2"))
case("FindSubmissionSets", "SubmissionTimeTo", lambda d: fs(d, **{f"{S}SubmissionTimeTo": "20250601130000"}),
     names("SS1"))
case("FindSubmissionSets", "AuthorPerson", lambda d: fs(d, **{f"{S}AuthorPerson": one("%Submitter%")}), names("SS2"))
case("FindSubmissionSets", "AuthorPerson-single-valued", lambda d: fs(
    d, **{f"{S}AuthorPerson": q("%Submitter%", "%Dopplemeyer%")}), NUMBER)
for form in (key, ce):
    case("FindSubmissionSets", f"ContentType-{form.__name__}", lambda d, f=form: fs(
        d, **{f"{S}ContentType": q(f(ALT_CONTENT_TYPE))}), names("SS2"))
case("FindSubmissionSets", "ContentType-multiple-mixed-forms", lambda d: fs(
    d, **{f"{S}ContentType": q(key(m.CONTENT_TYPE_CODE), ce(ALT_CONTENT_TYPE))}), names("SS1", "SS2", "SS3"))
case("FindSubmissionSets", "ContentType-malformed", lambda d: fs(d, **{f"{S}ContentType": q("x^^")}), ERROR)

# 3.18.4.1.2.3.7.3 FindFolders: PatientId R; LastUpdateTimeFrom/To O; CodeList O M AND/OR; Status R M.
F = "$XDSFolder"


def ff(d: Data, **extra) -> dict[str, Any]:
    return {f"{F}PatientId": one(d.pid), f"{F}Status": q(APPROVED), **extra}


case("FindFolders", "required-only", ff, names("F1", "F2"))
case("FindFolders", "missing-patient", lambda d: {f"{F}Status": q(APPROVED)}, MISSING)
case("FindFolders", "missing-status", lambda d: {f"{F}PatientId": one(d.pid)}, MISSING)
case("FindFolders", "status-short-form", lambda d: ff(d, **{f"{F}Status": q("Approved")}), ERROR)
case("FindFolders", "LastUpdateTime", lambda d: ff(d, **{f"{F}LastUpdateTimeFrom": "2000",
                                                         f"{F}LastUpdateTimeTo": "2200"}), names("F1", "F2"))
case("FindFolders", "LastUpdateTimeTo-past", lambda d: ff(d, **{f"{F}LastUpdateTimeTo": "2000"}), names())
for form in (key, ce):
    n = form.__name__
    case("FindFolders", f"CodeList-{n}", lambda d, f=form: ff(d, **{f"{F}CodeList": q(f(ALT_FOLDER_CODE))}),
         names("F2"))
    case("FindFolders", f"CodeList-{n}-or", lambda d, f=form: ff(
        d, **{f"{F}CodeList": q(f(NOTHING), f(m.FOLDER_CODE))}), names("F1", "F2"))
    case("FindFolders", f"CodeList-{n}-and", lambda d, f=form: ff(
        d, **{f"{F}CodeList": [[q(f(m.FOLDER_CODE))], [q(f(ALT_FOLDER_CODE))]]}), names("F2"))
    case("FindFolders", f"CodeList-{n}-and-none", lambda d, f=form: ff(
        d, **{f"{F}CodeList": [[q(f(m.FOLDER_CODE))], [q(f(NOTHING))]]}), names())


# 3.18.4.1.2.3.7.4 GetAll: patientId R; the three statuses R M; FormatCode O M;
# ConfidentialityCode O M AND/OR; Type O M.
def ga(d: Data, **extra) -> dict[str, Any]:
    return {"$patientId": one(d.pid), f"{E}Status": q(APPROVED), f"{S}Status": q(APPROVED),
            f"{F}Status": q(APPROVED), **extra}


def _ends(name: str) -> set[str]:
    """The objects an association named '<submission>:<source>-><target>' links, through a nested
    '(source->target)' association too."""
    source, target = name.split(":", 1)[1].split("->", 1)
    if target.startswith("("):
        return {source, *target[1:-1].split("->")}
    return {source, target}


def _all_of_p(d: Data, docs: set[str]) -> set[str]:
    """GetAll's answer when ``docs`` are the DocumentEntries kept: those, every SubmissionSet and
    Folder of the patient, and the associations whose ends are all among them."""
    kept = docs | {"SS1", "SS2", "SS3", "F1", "F2"}
    return kept | {k for k in d.ids if ":" in k and _ends(k) <= kept}


for status_param in (f"{E}Status", f"{S}Status", f"{F}Status", "$patientId"):
    case("GetAll", f"missing-{status_param}", lambda d, p=status_param: {
        k: v for k, v in ga(d).items() if k != p}, MISSING)
for status_param in (f"{E}Status", f"{S}Status", f"{F}Status"):
    case("GetAll", f"short-form-{status_param}", lambda d, p=status_param: ga(d, **{p: q("Approved")}), ERROR)
case("GetAll", "required-only", ga, lambda d: _all_of_p(d, {"A2", "B", "C"}))
case("GetAll", "DocumentEntryStatus-multiple", lambda d: ga(d, **{f"{E}Status": q(APPROVED, DEPRECATED)}),
     lambda d: _all_of_p(d, {"A1", "A2", "B", "C"}))
for form in (key, ce):
    n = form.__name__
    case("GetAll", f"FormatCode-{n}", lambda d, f=form: ga(d, **{f"{E}FormatCode": q(f(ALT_FORMAT))}),
         lambda d: _all_of_p(d, {"B"}))
    case("GetAll", f"ConfidentialityCode-{n}-and", lambda d, f=form: ga(
        d, **{f"{E}ConfidentialityCode": [[q(f(m.CONFIDENTIALITY_CODE))], [q(f(ALT_CONFIDENTIALITY))]]}),
        lambda d: _all_of_p(d, {"B"}))
case("GetAll", "FormatCode-multiple", lambda d: ga(d, **{f"{E}FormatCode": q(ce(ALT_FORMAT), key(m.FORMAT_CODE))}),
     lambda d: _all_of_p(d, {"A2", "B", "C"}))
case("GetAll", "Type-multiple", lambda d: ga(d, **{f"{E}Type": q(m.STABLE, m.ON_DEMAND)}),
     lambda d: _all_of_p(d, {"A2", "B", "C"}))


# 3.18.4.1.2.3.7.5 GetDocuments: EntryUUID O M / UniqueId O M, one of them; homeCommunityId O.
def alternatives(query: str, first: str, second: str, first_value, second_value, single: bool,
                 base: Callable[[Data], dict[str, Any]] = lambda d: {}) -> None:
    case(query, "neither-alternative", base, MISSING)
    case(query, "both-alternatives", lambda d: {**base(d), first: first_value(d), second: second_value(d)}, NUMBER)
    if single:
        case(query, f"{first}-single-valued", lambda d: {**base(d), first: q(d.A2, d.B)}, NUMBER)


alternatives("GetDocuments", f"{E}EntryUUID", f"{E}UniqueId", lambda d: q(d.A2), lambda d: q(d.uids["A2"]), False)
case("GetDocuments", "EntryUUID-multiple", lambda d: {f"{E}EntryUUID": q(d.A2, d.B, d.A1)}, names("A1", "A2", "B"))
case("GetDocuments", "UniqueId-multiple", lambda d: {f"{E}UniqueId": q(d.uids["A2"], d.uids["C"])}, names("A2", "C"))
case("GetDocuments", "UniqueId-one", lambda d: {f"{E}UniqueId": q(d.uids["B"])}, names("B"))
case("GetDocuments", "EntryUUID-malformed", lambda d: {f"{E}EntryUUID": q("not-a-uuid")}, ERROR)
case("GetDocuments", "homeCommunityId", lambda d: {f"{E}EntryUUID": q(d.B), "$homeCommunityId": one("urn:oid:1.2.3")},
     names("B"))

# 3.18.4.1.2.3.7.6 GetFolders: EntryUUID O M / UniqueId O M, one of them.
alternatives("GetFolders", f"{F}EntryUUID", f"{F}UniqueId", lambda d: q(d.F1), lambda d: q(d.uids["F1"]), False)
case("GetFolders", "EntryUUID-multiple", lambda d: {f"{F}EntryUUID": q(d.F1, d.F2)}, names("F1", "F2"))
case("GetFolders", "UniqueId", lambda d: {f"{F}UniqueId": q(d.uids["F2"])}, names("F2"))

# 3.18.4.1.2.3.7.7 GetAssociations: $uuid R M.
case("GetAssociations", "missing-uuid", lambda d: {}, MISSING)
case("GetAssociations", "uuid", lambda d: {"$uuid": q(d.A2)}, names("S1:SS1->A2", "S1:F1->A2"))
case("GetAssociations", "uuid-multiple", lambda d: {"$uuid": q(d.A2, d.C)},
     names("S1:SS1->A2", "S1:F1->A2", "S3:SS3->C", "S3:C->A1", "S3:F1->C"))

# 3.18.4.1.2.3.7.8 GetDocumentsAndAssociations: EntryUUID O M / UniqueId O M, one of them.
alternatives("GetDocumentsAndAssociations", f"{E}EntryUUID", f"{E}UniqueId", lambda d: q(d.A2),
             lambda d: q(d.uids["A2"]), False)
case("GetDocumentsAndAssociations", "EntryUUID", lambda d: {f"{E}EntryUUID": q(d.A2)},
     names("A2", "S1:SS1->A2", "S1:F1->A2"))
case("GetDocumentsAndAssociations", "UniqueId-multiple", lambda d: {f"{E}UniqueId": q(d.uids["A2"], d.uids["C"])},
     names("A2", "C", "S1:SS1->A2", "S1:F1->A2", "S3:SS3->C", "S3:C->A1", "S3:F1->C"))

# 3.18.4.1.2.3.7.9 GetSubmissionSets: $uuid R M.
case("GetSubmissionSets", "missing-uuid", lambda d: {}, MISSING)
case("GetSubmissionSets", "uuid", lambda d: {"$uuid": q(d.A2)}, names("SS1", "S1:SS1->A2"))
case("GetSubmissionSets", "uuid-multiple", lambda d: {"$uuid": q(d.A2, d.B, d.F2)},
     names("SS1", "SS2", "S1:SS1->A2", "S2:SS2->B", "S2:SS2->F2"))


# 3.18.4.1.2.3.7.10 GetSubmissionSetAndContents: EntryUUID O / UniqueId O (single), one of them;
# FormatCode O M; ConfidentialityCode O M AND/OR; Type O M.
def s1_contents(*docs: str) -> Callable[[Data], set[str]]:
    def expect(d: Data) -> set[str]:
        out = {"SS1", "F1", "S1:SS1->F1", *docs}
        for doc in docs:
            out |= {f"S1:SS1->{doc}", f"S1:F1->{doc}", f"S1:SS1->(F1->{doc})"}
        return out
    return expect


SSC, FC = "GetSubmissionSetAndContents", "GetFolderAndContents"
alternatives(SSC, f"{S}EntryUUID", f"{S}UniqueId", lambda d: one(d.SS1), lambda d: one(d.uids["SS1"]), False)
case(SSC, "EntryUUID-single-valued", lambda d: {f"{S}EntryUUID": q(d.SS1, d.SS2)}, NUMBER)
case(SSC, "UniqueId-single-valued", lambda d: {f"{S}UniqueId": q(d.uids["SS1"], d.uids["SS2"])}, NUMBER)
case(SSC, "EntryUUID", lambda d: {f"{S}EntryUUID": one(d.SS1)}, s1_contents("A1", "A2"))
case(SSC, "UniqueId", lambda d: {f"{S}UniqueId": one(d.uids["SS1"])}, s1_contents("A1", "A2"))
for form in (key, ce):
    n = form.__name__
    case(SSC, f"FormatCode-{n}-none", lambda d, f=form: {f"{S}EntryUUID": one(d.SS1),
                                                         f"{E}FormatCode": q(f(ALT_FORMAT))}, s1_contents())
    case(SSC, f"FormatCode-{n}", lambda d, f=form: {f"{S}EntryUUID": one(d.SS1),
                                                    f"{E}FormatCode": q(f(m.FORMAT_CODE))}, s1_contents("A1", "A2"))
    case(SSC, f"ConfidentialityCode-{n}-and", lambda d, f=form: {
        f"{S}EntryUUID": one(d.SS1),
        f"{E}ConfidentialityCode": [[q(f(m.CONFIDENTIALITY_CODE))], [q(f(ALT_CONFIDENTIALITY))]]}, s1_contents())
    case(SSC, f"ConfidentialityCode-{n}-or", lambda d, f=form: {
        f"{S}EntryUUID": one(d.SS1), f"{E}ConfidentialityCode": q(f(ALT_CONFIDENTIALITY), f(m.CONFIDENTIALITY_CODE))},
        s1_contents("A1", "A2"))
case(SSC, "FormatCode-multiple", lambda d: {f"{S}EntryUUID": one(d.SS1),
                                            f"{E}FormatCode": q(ce(ALT_FORMAT), ce(m.FORMAT_CODE))},
     s1_contents("A1", "A2"))
case(SSC, "Type-stable", lambda d: {f"{S}EntryUUID": one(d.SS1), f"{E}Type": q(m.STABLE)},
     s1_contents("A1", "A2"))
case(SSC, "Type-on-demand", lambda d: {f"{S}EntryUUID": one(d.SS1), f"{E}Type": q(m.ON_DEMAND)}, s1_contents())


# 3.18.4.1.2.3.7.11 GetFolderAndContents: EntryUUID O / UniqueId O (single), one of them;
# FormatCode O M; ConfidentialityCode O M AND/OR; Type O M.
def f2_contents(*docs: str) -> Callable[[Data], set[str]]:
    return lambda d: {"F2", *docs, *(f"S2:F2->{doc}" for doc in docs)}


alternatives(FC, f"{F}EntryUUID", f"{F}UniqueId", lambda d: one(d.F2), lambda d: one(d.uids["F2"]), False)
case(FC, "EntryUUID-single-valued", lambda d: {f"{F}EntryUUID": q(d.F1, d.F2)}, NUMBER)
case(FC, "EntryUUID", lambda d: {f"{F}EntryUUID": one(d.F2)}, f2_contents("B"))
case(FC, "UniqueId", lambda d: {f"{F}UniqueId": one(d.uids["F2"])}, f2_contents("B"))
for form in (key, ce):
    n = form.__name__
    case(FC, f"FormatCode-{n}", lambda d, f=form: {f"{F}EntryUUID": one(d.F2), f"{E}FormatCode": q(f(ALT_FORMAT))},
         f2_contents("B"))
    case(FC, f"FormatCode-{n}-none", lambda d, f=form: {f"{F}EntryUUID": one(d.F2),
                                                        f"{E}FormatCode": q(f(m.FORMAT_CODE))}, f2_contents())
    case(FC, f"ConfidentialityCode-{n}-and", lambda d, f=form: {
        f"{F}EntryUUID": one(d.F2),
        f"{E}ConfidentialityCode": [[q(f(m.CONFIDENTIALITY_CODE))], [q(f(ALT_CONFIDENTIALITY))]]}, f2_contents("B"))
    case(FC, f"ConfidentialityCode-{n}-and-none", lambda d, f=form: {
        f"{F}EntryUUID": one(d.F2),
        f"{E}ConfidentialityCode": [[q(f(m.CONFIDENTIALITY_CODE))], [q(f(NOTHING))]]}, f2_contents())
case(FC, "Type-multiple", lambda d: {f"{F}EntryUUID": one(d.F2), f"{E}Type": q(m.STABLE, m.ON_DEMAND)},
     f2_contents("B"))

# 3.18.4.1.2.3.7.12 GetFoldersForDocument: EntryUUID O / UniqueId O (single), one of them.
GFD = "GetFoldersForDocument"
alternatives(GFD, f"{E}EntryUUID", f"{E}UniqueId", lambda d: one(d.A2), lambda d: one(d.uids["A2"]), True)
case(GFD, "EntryUUID", lambda d: {f"{E}EntryUUID": one(d.A2)}, names("F1"))
case(GFD, "UniqueId", lambda d: {f"{E}UniqueId": one(d.uids["B"])}, names("F2"))
# C replaced A1, which is in F1: the replacement joined F1 (ITI TF-3 4.2.2.2.3)
case(GFD, "replacement-in-the-original's-folder", lambda d: {f"{E}UniqueId": one(d.uids["C"])}, names("F1"))
case(GFD, "no-folder", lambda d: {f"{E}UniqueId": one("1.2.3.4.5.6.7.8.9")}, names())

# 3.18.4.1.2.3.7.13 GetRelatedDocuments: EntryUUID O / UniqueId O (single), one of them;
# AssociationTypes R M; Type O M.
GRD = "GetRelatedDocuments"
alternatives(GRD, f"{E}EntryUUID", f"{E}UniqueId", lambda d: one(d.C), lambda d: one(d.uids["C"]), True,
             lambda d: {"$AssociationTypes": q(RPLC)})
case(GRD, "missing-AssociationTypes", lambda d: {f"{E}EntryUUID": one(d.C)}, MISSING)
case(GRD, "EntryUUID", lambda d: {f"{E}EntryUUID": one(d.C), "$AssociationTypes": q(RPLC)},
     names("C", "A1", "S3:C->A1"))
case(GRD, "UniqueId-of-the-replaced", lambda d: {f"{E}UniqueId": one(d.uids["A1"]), "$AssociationTypes": q(RPLC)},
     names("C", "A1", "S3:C->A1"))
case(GRD, "AssociationTypes-multiple", lambda d: {f"{E}EntryUUID": one(d.C), "$AssociationTypes": q(APND, RPLC)},
     names("C", "A1", "S3:C->A1"))
case(GRD, "AssociationTypes-other", lambda d: {f"{E}EntryUUID": one(d.C), "$AssociationTypes": q(APND)}, names())
case(GRD, "no-relation", lambda d: {f"{E}EntryUUID": one(d.A2), "$AssociationTypes": q(RPLC)}, names())

QUERY_IDS = {
    "FindDocuments": m.FIND_DOCUMENTS, "FindDocumentsByReferenceId": m.FIND_DOCUMENTS_BY_REFERENCE_ID,
    "FindSubmissionSets": m.FIND_SUBMISSION_SETS, "FindFolders": m.FIND_FOLDERS, "GetAll": m.GET_ALL,
    "GetDocuments": m.GET_DOCUMENTS, "GetFolders": m.GET_FOLDERS, "GetAssociations": m.GET_ASSOCIATIONS,
    "GetDocumentsAndAssociations": m.GET_DOCUMENTS_AND_ASSOCIATIONS, "GetSubmissionSets": m.GET_SUBMISSION_SETS,
    "GetSubmissionSetAndContents": m.GET_SUBMISSION_SET_AND_CONTENTS, "GetFolderAndContents": m.GET_FOLDER_AND_CONTENTS,
    "GetFoldersForDocument": m.GET_FOLDERS_FOR_DOCUMENT, "GetRelatedDocuments": m.GET_RELATED_DOCUMENTS,
}


def test_every_query_of_the_framework_is_covered():
    assert {c.query for c in CASES} == set(QUERY_IDS)
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("return_type", ["LeafClass", "ObjectRef"])
@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
async def test_parameter_table(data, c: Case, return_type: str):
    d, url = data
    envelope = m.stored_query_envelope(QUERY_IDS[c.query], c.params(d), return_type)
    async with aiohttp.ClientSession() as session:
        response = await _post(session, url, m.ACTION_ITI18, envelope)
    status, errors = parse_registry_response(response)
    codes = [e.code for e in errors if e.is_error]
    if isinstance(c.expect, str):
        assert status == STATUS_FAILURE and codes and set(codes) == {c.expect}, [(e.code, e.context) for e in errors]
        return
    assert (status, codes) == (STATUS_SUCCESS, []), [(e.code, e.context) for e in errors]
    got = read_object_refs(response) if return_type == "ObjectRef" else [
        o.entry_uuid for o in read_registry_objects(response)]
    by_id = {v: k for k, v in d.ids.items()}
    got_names = sorted(by_id.get(i, i) for i in got)
    assert len(got) == len(set(got)), f"duplicates in {got_names}"
    assert set(got_names) == c.expect(d)


def test_the_suite_covers_both_code_forms_of_every_coded_parameter():
    coded = {"ClassCode", "TypeCode", "PracticeSettingCode", "HealthcareFacilityTypeCode", "FormatCode",
             "ConfidentialityCode", "EventCodeList", "ContentType", "CodeList"}
    for param in coded:
        forms = {form for c in CASES for form in ("key", "ce") if c.name.startswith(f"{param}-{form}")}
        assert forms == {"key", "ce"}, param
