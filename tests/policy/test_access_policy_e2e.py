"""The access policy end to end, real processes: a registry holding the policy, three hospitals' repositories
(ITI-43) and hospital A's imaging source (RAD-69, WADO-URI, WADO-RS, QIDO-RS), every request carrying a signed
XUA assertion for a user of one hospital, as the portal sends them.

Relationships come from each hospital's own ADT feed (MSH-4); a denied document never appears in any answer:
FindDocuments (LeafClass and ObjectRef), GetDocuments by its uniqueId, GetAssociations, ITI-43 by its uniqueId,
RAD-69 / WADO / DICOMweb by its study, and a guessed uniqueId or study UID is refused in the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from consumer.client import DocumentRequest, SoapClient, retrieve_document_set
from consumer.client.query import adhoc_query_request, find_documents, quoted_list
from consumer.client.source import CONFIDENTIALITY, document_entry, provide_and_register, submission_package
from ihe.metadata.model import Code, LocalizedString
from ihe.namespaces import ACTION_ITI18
from ihe.xua.assertion import authorization_header, build_assertion, security_header
from ihe.xua.model import HL7_PURPOSE_OF_USE, SNOMED_CT, XuaSubject
from ihe.xua.model import Code as XuaCode
from tests.conftest import ROOT, start_registry_process
from tests.imaging_source.conftest import start_imaging_source
from tests.imaging_source.rad69_client import rad69
from tests.imaging_source.test_xdsi_flow import feed_patient, storescu, study_copy, wait_for
from tests.messages import valid_nhs_number
from tests.repository.conftest import start_repository_process
from tests.xua_keys import AUDIENCE, PORTAL_ISSUER, make_signer, write_trust_file

NHS_OID = "2.16.840.1.113883.2.1.4.1"
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
GET_ASSOCIATIONS = "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
IMAGING_REPOSITORY_ID = "1.3.6.1.4.1.21367.2017.2.4.99"  # tests.imaging_source.conftest.start_imaging_source
EXPLICIT_LE = "1.2.840.10008.1.2.1"
GUM_ROLE = "158965000"  # a SNOMED CT role code the restriction lists (the rule is by code)
RESTRICTED = Code("R", CONFIDENTIALITY, LocalizedString("restricted"))
BPPC = Code("urn:ihe:iti:bppc:2007", "1.3.6.1.4.1.19376.1.2.3", LocalizedString("BPPC"))
OPT_OUT = Code("OPT-OUT", "1.3.6.1.4.1.21367.2026.0.2", LocalizedString("no sharing between hospitals"))
OPT_IN = Code("OPT-IN", "1.3.6.1.4.1.21367.2026.0.2", LocalizedString("sharing for care"))
DISCHARGE_DAYS = 4 / 86400  # four seconds, so the test can see a relationship end


@dataclass(frozen=True)
class Hospital:
    name: str
    org: str  # organisation OID
    namespace: str  # its ADT MSH-4 and hospital-number namespace
    hospital_number_oid: str
    repository_unique_id: str


HOSPITALS = {
    key: Hospital(f"Hospital {key}", f"1.3.6.1.4.1.21367.2026.{n}", f"HOSP{key}", f"1.3.6.1.4.1.21367.2026.{n}.2",
                  f"1.3.6.1.4.1.21367.2026.{n}.1")
    for n, key in ((1, "A"), (2, "B"), (3, "C"))
}


def policy_file(folder: Path) -> Path:
    lines = [f"relationship-days-after-discharge = {DISCHARGE_DAYS}", "break-glass-minutes = 60",
             f'opt-out-policies = ["{OPT_OUT.code}^^^{OPT_OUT.scheme}"]',
             f'opt-in-policies = ["{OPT_IN.code}^^^{OPT_IN.scheme}"]', ""]
    for key, h in HOSPITALS.items():
        repositories = [h.repository_unique_id] + ([IMAGING_REPOSITORY_ID] if key == "A" else [])
        lines += ["[[organisations]]", f'id = "{h.org}"', f'names = ["{h.name}"]',
                  f"repositories = {repositories!r}".replace("'", '"'), f'feeds = ["{h.namespace}"]', ""]
    lines += ["[[restrictions]]", 'name = "sexual health"', f'confidentiality = ["R^^^{CONFIDENTIALITY}"]',
              f'organisations = ["{HOSPITALS["C"].org}"]', f'roles = ["{GUM_ROLE}"]']
    path = folder / "access-policy.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Region:
    registry: object
    repositories: dict
    imaging: object
    policy: Path
    database_url: str
    signer: object
    audit: list  # the registry's ATNA records (syslog over UDP), as received
    audit_url: str


def udp_collector(running: contextlib.ExitStack) -> tuple[int, list[bytes]]:
    """A UDP syslog receiver in a thread (an audit repository's side of udp://), for the registry's records."""
    import socket
    import threading

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                received.append(sock.recv(65535))
            except TimeoutError:
                continue

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    running.callback(sock.close)
    running.callback(thread.join, 5)
    running.callback(stop.set)
    return sock.getsockname()[1], received


@pytest.fixture(scope="module")
def region(registry_database_url, new_imaging_database, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy")
    signer = make_signer(PORTAL_ISSUER, "portal")
    trust = str(write_trust_file(tmp, [signer]))
    policy = policy_file(tmp)
    xua = ("--xua", "optional", "--xua-trust", trust)
    with contextlib.ExitStack() as running:
        udp_port, audit = udp_collector(running)
        registry = start_registry_process(registry_database_url, "--affinity-domain-oid", NHS_OID,
                                          "--access-policy", str(policy), *xua,
                                          "--audit-repository", f"udp://127.0.0.1:{udp_port}",
                                          "--audit-spool-dir", str(tmp / "registry-audit"))
        running.callback(registry.stop)
        decisions = f"http://127.0.0.1:{registry.port}/policy/decisions"
        repositories = {}
        for key, h in HOSPITALS.items():
            repositories[key] = start_repository_process(
                registry_database_url, registry.url, tmp / f"repository-{key}",
                repository_unique_id=h.repository_unique_id,
                extra=("--access-policy-url", decisions, "--access-policy-cache", "0", *xua))
            running.callback(repositories[key].stop)
        a = HOSPITALS["A"]
        imaging = start_imaging_source(
            new_imaging_database(), tmp / "instances", "--repository-url", repositories["A"].url,
            "--pix-port", str(registry.mllp_port), "--affinity-domain-oid", NHS_OID,
            "--patient-id-issuer-oid", a.hospital_number_oid, "--quiet-period", "1", "--tracker-interval", "0.2",
            "--retry-initial", "0.5", "--retry-max", "1", "--access-policy-url", decisions, *xua)
        running.callback(imaging.stop)
        yield Region(registry, repositories, imaging, policy, registry_database_url, signer, audit,
                     f"udp://127.0.0.1:{udp_port}")


# --- identities and clients -----------------------------------------------------------------------

def assertion(region: Region, key: str, user: str = "dr", role: str = "309343006") -> bytes:
    h = HOSPITALS[key]
    subject = XuaSubject(name_id=f"{user}@{h.namespace.lower()}.example", subject_id=f"{user} of {h.name}",
                         organization=h.name, organization_id=f"urn:oid:{h.org}",
                         role=XuaCode(role, SNOMED_CT, "role", "SNOMED_CT"),
                         purpose_of_use=XuaCode("TREATMENT", HL7_PURPOSE_OF_USE, "Treatment", "nhin-purpose"))
    return build_assertion(subject, region.signer, audience=AUDIENCE)


class UserClient(SoapClient):
    """A SOAP client sending one user's assertion with every call (as the portal does); None: no assertion."""

    def __init__(self, security: bytes | None) -> None:
        super().__init__(timeout=30)
        self.security = security

    async def call(self, *args, **kwargs):
        return await super().call(*args, security=self.security, **kwargs)


def as_user(region: Region, key: str | None, user: str = "dr", role: str = "309343006") -> UserClient:
    return UserClient(security_header(assertion(region, key, user, role)) if key else None)


def http_headers(region: Region, key: str, user: str = "dr") -> dict[str, str]:
    return authorization_header(assertion(region, key, user))


# --- actions --------------------------------------------------------------------------------------

async def adt(region: Region, key: str, event: str, nhs: str, hospital_number: str | None = None) -> None:
    """ITI-8 from hospital ``key``'s own PAS (MSH-4 its namespace)."""
    h = HOSPITALS[key]
    pid3 = f"{nhs}^^^NHS&{NHS_OID}&ISO"
    if hospital_number:
        pid3 += f"~{hospital_number}^^^{h.namespace}&{h.hospital_number_oid}&ISO"
    await feed_patient(region.registry.mllp_port, pid3, "Policy^Pat", event=event, facility=h.namespace,
                       patient_class="I")


@dataclass(frozen=True)
class Doc:
    unique_id: str
    entry_uuid: str
    repository: str  # hospital key


async def submit(region: Region, key: str, nhs: str, *, confidential: bool = False, consent: Code | None = None
                 ) -> Doc:
    patient = f"{nhs}^^^&{NHS_OID}&ISO"
    entry = document_entry(patient, "text/plain", title=f"report of {key}",
                           confidentiality_codes=[RESTRICTED] if confidential else None,
                           format_code=BPPC if consent else None, event_codes=[consent] if consent else None)
    package = submission_package(patient, [entry], source_id=HOSPITALS[key].org + ".3")
    async with SoapClient(timeout=30) as client:
        result = await provide_and_register(client, region.repositories[key].url, package,
                                            {entry.entry_uuid: f"report {uuid.uuid4()}\n".encode()})
    assert result.status.endswith("Success"), result.errors
    return Doc(entry.unique_id, entry.entry_uuid, key)


async def query(client: UserClient, region: Region, query_id: str, params: dict[str, str],
                return_type: str = "LeafClass") -> bytes:
    """The raw ITI-18 answer (the test looks for identifiers anywhere in it)."""
    async with client:
        result = await client.call(region.registry.url, ACTION_ITI18,
                                   adhoc_query_request(query_id, params, return_type))
    from lxml import etree

    text = etree.tostring(result.body)
    assert b"ResponseStatusType:Success" in text, text[:2000]
    return text


async def visible(region: Region, key: str | None, nhs: str, docs: list[Doc], **who) -> set[str]:
    """Which of ``docs`` hospital ``key``'s user sees: FindDocuments (LeafClass and ObjectRef), GetDocuments by
    uniqueId and GetAssociations must agree (a denied document appears in none)."""
    patient = f"'{nhs}^^^&{NHS_OID}&ISO'"
    find = {"$XDSDocumentEntryPatientId": patient, "$XDSDocumentEntryStatus": quoted_list([APPROVED])}
    answers = {
        "find": await query(as_user(region, key, **who), region, FIND_DOCUMENTS, find),
        "objectref": await query(as_user(region, key, **who), region, FIND_DOCUMENTS, find, "ObjectRef"),
        "get": await query(as_user(region, key, **who), region, GET_DOCUMENTS,
                           {"$XDSDocumentEntryUniqueId": quoted_list([d.unique_id for d in docs])}),
        "associations": await query(as_user(region, key, **who), region, GET_ASSOCIATIONS,
                                    {"$uuid": quoted_list([d.entry_uuid for d in docs])}),
    }
    seen = {}
    for name, text in answers.items():
        seen[name] = {d.unique_id for d in docs if d.entry_uuid.encode() in text or d.unique_id.encode() in text}
    assert len({frozenset(s) for s in seen.values()}) == 1, f"the queries disagree: {seen}"
    return seen["find"]


async def retrieve(region: Region, key: str | None, doc: Doc, **who) -> tuple[bool, list[str]]:
    """ITI-43 of ``doc`` from its repository as hospital ``key``'s user: (content returned, error codes)."""
    got, errors = await retrieve_answer(region, key, doc, **who)
    return got, [e.code for e in errors]


async def retrieve_answer(region: Region, key: str | None, doc: Doc, **who) -> tuple[bool, list]:
    repo = region.repositories[doc.repository]
    async with as_user(region, key, **who) as client:
        result = await retrieve_document_set(client, repo.url, [DocumentRequest(repo.repository_unique_id,
                                                                                doc.unique_id)])
    return bool(result.documents), result.errors


async def published(region: Region, nhs: str, study_uid: str) -> list:
    """The study's manifests as hospital A (the source) finds them."""
    async with as_user(region, "A") as client:
        entries = await find_documents(client, region.registry.url, f"{nhs}^^^&{NHS_OID}&ISO")
    return [e for e in entries if f"{study_uid}^^^^urn:ihe:iti:xds:2016:studyInstanceUID"
            in {r.value for r in e.reference_ids}]


def uids(docs: list[Doc]) -> set[str]:
    return {d.unique_id for d in docs}


def policy_cli(region: Region, *args: str) -> subprocess.CompletedProcess:
    """The administrator's command, auditing to the same audit repository as the registry."""
    return subprocess.run([sys.executable, "-m", "registry.cli", "policy", "--database-url", region.database_url,
                           "--access-policy", str(region.policy), "--audit-repository", region.audit_url,
                           "--audit-spool-dir", str(region.policy.parent / "cli-audit"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


async def events(region: Region, nhs: str) -> list[tuple[str, str | None]]:
    conn = await asyncpg.connect(region.database_url)
    try:
        rows = await conn.fetch(
            "SELECT e.kind, e.organisation FROM policy_event e JOIN patient_identifier i ON i.patient = e.patient"
            " WHERE i.id_value = $1 ORDER BY e.id", nhs)
    finally:
        await conn.close()
    return [(r["kind"], r["organisation"]) for r in rows]


def org(key: str) -> str:
    return HOSPITALS[key].org


# --- the rules ------------------------------------------------------------------------------------

async def test_relationships_from_adt_filter_queries_and_refuse_retrieval(region):
    nhs = valid_nhs_number()
    await adt(region, "A", "A01", nhs)  # hospital A admits the patient
    doc_a, doc_b = await submit(region, "A", nhs), await submit(region, "B", nhs)
    both = [doc_a, doc_b]

    assert await visible(region, "A", nhs, both) == uids(both)  # its own, and B's by the relationship
    assert await visible(region, "B", nhs, both) == {doc_b.unique_id}  # only its own: no relationship
    assert await visible(region, "C", nhs, both) == set()
    assert await visible(region, None, nhs, both) == set()  # no identity: the policy's default, deny

    assert await retrieve(region, "A", doc_a) == (True, [])
    assert await retrieve(region, "A", doc_b) == (True, [])
    assert await retrieve(region, "B", doc_a) == (False, ["XDSDocumentUniqueIdError"])
    assert await retrieve(region, "C", doc_b) == (False, ["XDSDocumentUniqueIdError"])
    assert await retrieve(region, None, doc_a) == (False, ["XDSDocumentUniqueIdError"])
    guessed = Doc(f"2.25.{uuid.uuid4().int}", str(uuid.uuid4()), "A")
    assert await retrieve(region, "C", guessed) == (False, ["XDSDocumentUniqueIdError"])
    # ... in the same words: the answer does not tell whether the uniqueId exists
    (_, [denied]), (_, [unknown]) = await retrieve_answer(region, "B", doc_a), await retrieve_answer(region, "B",
                                                                                                     guessed)
    assert denied.context.replace(doc_a.unique_id, "?") == unknown.context.replace(guessed.unique_id, "?")

    # Hospital C registers the patient: it sees both; it discharges the patient: four seconds later it does not.
    await adt(region, "C", "A04", nhs)
    assert await visible(region, "C", nhs, both) == uids(both)
    assert await retrieve(region, "C", doc_b) == (True, [])
    await adt(region, "C", "A03", nhs)
    assert await visible(region, "C", nhs, both) == uids(both)  # not yet expired
    await asyncio.sleep(DISCHARGE_DAYS * 86400 + 0.5)
    assert await visible(region, "C", nhs, both) == set()
    assert await retrieve(region, "C", doc_b) == (False, ["XDSDocumentUniqueIdError"])
    assert await visible(region, "A", nhs, both) == uids(both)  # A's admission goes on
    # A demographics update (A08) from C does not start a relationship again.
    await adt(region, "B", "A08", nhs)
    assert await visible(region, "B", nhs, both) == {doc_b.unique_id}
    assert await events(region, nhs) == [("relationship", org("A")), ("relationship", org("C")),
                                         ("discharge", org("C"))]


async def test_opt_out_by_the_administrator_and_back(region):
    nhs = valid_nhs_number()
    await adt(region, "A", "A01", nhs)
    doc_a, doc_b = await submit(region, "A", nhs), await submit(region, "B", nhs)
    both = [doc_a, doc_b]
    assert await visible(region, "A", nhs, both) == uids(both)

    done = policy_cli(region, "opt-out", "--patient", f"{nhs}^^^&{NHS_OID}&ISO", "--reason", "patient's letter",
                      "--by", "admin")
    assert done.returncode == 0, done.stderr
    assert await visible(region, "A", nhs, both) == {doc_a.unique_id}  # the source still sees its own
    assert await visible(region, "B", nhs, both) == {doc_b.unique_id}
    assert await retrieve(region, "A", doc_b) == (False, ["XDSDocumentUniqueIdError"])
    # break-glass neither (the policy does not allow it for opted-out patients)
    status, _ = await break_glass(region, "C", nhs, "EMERGENCY", "unconscious in ED")
    assert status == 403

    done = policy_cli(region, "opt-in", "--patient", f"{nhs}^^^&{NHS_OID}&ISO", "--by", "admin")
    assert done.returncode == 0, done.stderr
    assert await visible(region, "A", nhs, both) == uids(both)
    assert await retrieve(region, "A", doc_b) == (True, [])
    assert [k for k, _ in await events(region, nhs)] == ["relationship", "opt-out", "opt-in"]
    for change in (b"opted out of sharing (patient's letter)", b"opted in to sharing"):
        await wait_for(lambda change=change: [r for r in region.audit if b"110113" in r and change in r
                                              and nhs.encode() in r], what=f"the audit record of {change!r}")
    unknown = policy_cli(region, "opt-out", "--patient", f"{valid_nhs_number()}^^^&{NHS_OID}&ISO")
    assert unknown.returncode == 1 and "not known" in unknown.stderr


async def test_a_registered_consent_document_opts_out_and_back(region):
    nhs = valid_nhs_number()
    await adt(region, "A", "A01", nhs)
    doc_b = await submit(region, "B", nhs)
    assert await visible(region, "A", nhs, [doc_b]) == {doc_b.unique_id}
    refusal = await submit(region, "C", nhs, consent=OPT_OUT)  # the patient's acknowledgement, scanned at C
    assert await visible(region, "A", nhs, [doc_b, refusal]) == set()
    assert await retrieve(region, "A", doc_b) == (False, ["XDSDocumentUniqueIdError"])
    assert await visible(region, "C", nhs, [doc_b, refusal]) == {refusal.unique_id}  # its own only
    await submit(region, "C", nhs, consent=OPT_IN)
    assert await visible(region, "A", nhs, [doc_b]) == {doc_b.unique_id}
    assert [k for k, _ in await events(region, nhs)] == ["relationship", "opt-out", "opt-in"]


async def break_glass(region: Region, key: str, nhs: str, code: str, text: str, user: str = "dr"):
    h = HOSPITALS[key]
    body = {"requester": {"organisation": f"urn:oid:{h.org}", "user": f"{user}@{h.namespace.lower()}.example",
                          "role": "309343006", "source": "session"},
            "patient": f"{nhs}^^^&{NHS_OID}&ISO", "reason_code": code, "reason_text": text}
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{region.registry.port}/policy/break-glass", json=body) as response:
        return response.status, await response.text()


async def test_break_glass_for_one_user_for_a_while_listed_for_review(region):
    nhs = valid_nhs_number()
    await adt(region, "B", "A01", nhs)
    doc_b = await submit(region, "B", nhs)
    assert await visible(region, "C", nhs, [doc_b]) == set()
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{region.registry.port}/policy/patient",
            json={"requester": {"organisation": org("C"), "user": "dr@hospc.example"},
                  "patient": f"{nhs}^^^&{NHS_OID}&ISO"}) as response:
        answer = await response.json()
    assert answer["permit"] is False and answer["break_glass"] is True and "no care relationship" in answer["reason"]
    assert {r["code"] for r in answer["reasons"]} >= {"EMERGENCY"}

    assert (await break_glass(region, "C", nhs, "BORED", "just looking"))[0] == 400  # not a coded reason
    assert (await break_glass(region, "C", nhs, "EMERGENCY", "  "))[0] == 400  # no free text
    status, text = await break_glass(region, "C", nhs, "EMERGENCY", "unconscious in ED, no referral yet")
    assert status == 200, text
    assert await visible(region, "C", nhs, [doc_b]) == {doc_b.unique_id}
    assert await retrieve(region, "C", doc_b) == (True, [])
    assert await visible(region, "C", nhs, [doc_b], user="nurse") == set()  # another user of C: no
    assert await retrieve(region, "C", doc_b, user="nurse") == (False, ["XDSDocumentUniqueIdError"])

    alert = await wait_for(lambda: [r for r in region.audit if b"110113" in r and b"unconscious in ED" in r],
                           what="the break-glass security alert at the audit repository")
    assert b"Use of Restricted Function" in alert[0] and nhs.encode() in alert[0]
    listed = policy_cli(region, "break-glass")
    assert listed.returncode == 0 and "unconscious in ED" in listed.stdout and nhs in listed.stdout, listed.stderr
    assert ("break-glass", org("C")) in await events(region, nhs)


async def test_restricted_documents_only_for_listed_organisations_or_roles(region):
    nhs = valid_nhs_number()
    await adt(region, "A", "A01", nhs)
    await adt(region, "C", "A01", nhs)
    normal, restricted = await submit(region, "B", nhs), await submit(region, "B", nhs, confidential=True)
    both = [normal, restricted]
    assert await visible(region, "A", nhs, both) == {normal.unique_id}
    assert await retrieve(region, "A", restricted) == (False, ["XDSDocumentUniqueIdError"])
    assert await visible(region, "A", nhs, both, role=GUM_ROLE) == uids(both)  # a listed role
    assert await retrieve(region, "A", restricted, role=GUM_ROLE) == (True, [])
    assert await visible(region, "C", nhs, both) == uids(both)  # a listed organisation
    assert await visible(region, "B", nhs, both) == uids(both)  # the source


async def test_imaging_retrieval_points_refuse_without_a_relationship(region, samples, tmp_path):
    nhs, number = valid_nhs_number(), f"A{uuid.uuid4().int % 10**7:07d}"
    await adt(region, "A", "A01", nhs, number)
    ds = study_copy(samples["CT"], tmp_path / "study", number, IssuerOfPatientID="HOSPA")
    storescu(region.imaging.dicom_port, tmp_path / "study")
    [manifest] = await wait_for(lambda: published(region, nhs, ds.StudyInstanceUID), what="the study's manifest")
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    base = region.imaging.url

    async def http(key: str | None, path: str, accept: str = "*/*") -> tuple[int, bytes]:
        headers = {"Accept": accept, **(http_headers(region, key) if key else {})}
        async with aiohttp.ClientSession() as session, session.get(base + path, headers=headers) as response:
            return response.status, await response.read()

    wado_uri = (f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
                "&contentType=application/dicom")
    wado_rs = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    for key, allowed in (("A", True), ("C", False), (None, False)):
        status, body = await http(key, wado_uri)
        assert (status == 200) is allowed and (status == 403 or allowed), (key, status, body[:200])
        status, body = await http(key, wado_rs, 'multipart/related; type="application/dicom"')
        assert (status == 200) is allowed and (status == 403 or allowed), (key, status, body[:200])
        status, body = await http(key, f"/dicomweb/studies/{study}/metadata", "application/dicom+json")
        assert (status == 200) is allowed and (status == 403 or allowed), (key, status)
        status, body = await http(key, f"/dicomweb/studies?StudyInstanceUID={study}", "application/dicom+json")
        assert (study.encode() in body) is allowed, (key, status)
        status, body = await http(key, "/dicomweb/studies", "application/dicom+json")
        assert (study.encode() in body) is allowed, (key, status)
        for level in ("series", "instances"):  # searches across studies are filtered too
            status, body = await http(key, f"/dicomweb/{level}?StudyInstanceUID={study}", "application/dicom+json")
            assert (sop.encode() in body or series.encode() in body) is allowed, (key, level, status)
        async with as_user(region, key) as client:
            got, errors, instances = await rad69(client, f"{base}/rad69",
                                                 [(study, series, IMAGING_REPOSITORY_ID, sop)], [EXPLICIT_LE])
        assert (sop in instances) is allowed, (key, got, errors)
        assert allowed or [e.code for e in errors] == ["XDSDocumentUniqueIdError"]
        if not allowed:  # said as of an instance not held here, even when the request names the wrong series
            guessed_sop = f"2.25.{uuid.uuid4().int}"
            async with as_user(region, key) as client:
                _, unknown, _ = await rad69(client, f"{base}/rad69", [(study, series, IMAGING_REPOSITORY_ID,
                                                                         guessed_sop)], [EXPLICIT_LE])
                _, misplaced, _ = await rad69(client, f"{base}/rad69", [(study, "1.2.3.4", IMAGING_REPOSITORY_ID,
                                                                           sop)], [EXPLICIT_LE])
            assert (errors[0].context.replace(sop, "?") == unknown[0].context.replace(guessed_sop, "?")
                    == misplaced[0].context.replace(sop, "?")), (errors, unknown, misplaced)
    # The manifest is not listed for C either; a guessed study UID is refused like a denied one.
    assert await visible(region, "C", nhs, [Doc(manifest.unique_id, manifest.entry_uuid, "A")]) == set()
    _, denied = await http("C", f"/dicomweb/studies/{study}/metadata", "application/dicom+json")
    status, guessed = await http("C", f"/dicomweb/studies/2.25.{uuid.uuid4().int}/metadata", "application/dicom+json")
    assert status == 403 and guessed == denied  # in the same words: the answer does not tell which exists
    # Hospital C admits the patient: the images are served to it too.
    await adt(region, "C", "A01", nhs)
    status, _ = await http("C", wado_rs, 'multipart/related; type="application/dicom"')
    assert status == 200


async def test_what_is_withheld_does_not_count_towards_the_registrys_limit(region, tmp_path):
    """XDSTooManyResults applies to what the requester may see: with a limit of 3, hospital B's user gets its own
    2 of the patient's 6 documents (before, the 4 withheld from it made the answer "too many" and told that they
    exist); hospital C (4 of its own) and hospital A (6, by its admission) are told to narrow the query."""
    from lxml import etree

    trust = write_trust_file(tmp_path, [region.signer])
    small = start_registry_process(region.database_url, "--affinity-domain-oid", NHS_OID, "--access-policy",
                                   str(region.policy), "--xua", "optional", "--xua-trust", str(trust),
                                   "--max-query-results", "3")
    try:
        nhs = valid_nhs_number()
        await adt(region, "A", "A01", nhs)
        at_b = [await submit(region, "B", nhs) for _ in range(2)]
        at_c = [await submit(region, "C", nhs) for _ in range(4)]
        find = {"$XDSDocumentEntryPatientId": f"'{nhs}^^^&{NHS_OID}&ISO'",
                "$XDSDocumentEntryStatus": quoted_list([APPROVED])}

        async def answer(key: str | None, return_type: str) -> bytes:
            async with as_user(region, key) as client:
                result = await client.call(small.url, ACTION_ITI18,
                                           adhoc_query_request(FIND_DOCUMENTS, find, return_type))
            return etree.tostring(result.body)

        for return_type in ("LeafClass", "ObjectRef"):
            text = await answer("B", return_type)
            assert b"ResponseStatusType:Success" in text and b"XDSTooManyResults" not in text, text[:1500]
            assert {d.entry_uuid for d in at_b + at_c if d.entry_uuid.encode() in text} == {d.entry_uuid
                                                                                             for d in at_b}
            for key in ("C", "A"):
                text = await answer(key, return_type)
                assert b"ResponseStatusType:Failure" in text and b"XDSTooManyResults" in text, text[:1500]
                assert not any(d.entry_uuid.encode() in text for d in at_b + at_c)
            text = await answer(None, return_type)  # no identity: nothing, and no error that counts them
            assert b"ResponseStatusType:Success" in text and not any(d.entry_uuid.encode() in text
                                                                     for d in at_b + at_c)
    finally:
        small.stop()


async def test_qido_limit_and_offset_count_only_what_the_requester_may_see(region, samples, tmp_path):
    """Two studies at hospital A's imaging source; hospital B cares for the patient of the older one only. Its
    QIDO-RS searches with limit=1 find that study (before, the newer, withheld study took the one place and the
    answer was empty), and offset=1 finds nothing."""
    studies: dict[str, str] = {}
    for which, date in (("withheld", "20300101"), ("seen", "19900101")):  # newest first in a study search
        nhs, number = valid_nhs_number(), f"A{uuid.uuid4().int % 10**7:07d}"
        await adt(region, "A", "A01", nhs, number)
        if which == "seen":
            await adt(region, "B", "A01", nhs)
        ds = study_copy(samples["CT"], tmp_path / which, number, IssuerOfPatientID="HOSPA", StudyDate=date)
        storescu(region.imaging.dicom_port, tmp_path / which)
        await wait_for(lambda nhs=nhs, uid=ds.StudyInstanceUID: published(region, nhs, uid), what="the manifest")
        studies[which] = ds.StudyInstanceUID

    async def search(path: str) -> tuple[int, list[str]]:
        headers = {"Accept": "application/dicom+json", **http_headers(region, "B")}
        async with aiohttp.ClientSession() as session, \
                session.get(f"{region.imaging.url}/dicomweb/{path}", headers=headers) as response:
            found = await response.json(content_type=None) if response.status == 200 else []
        return response.status, [item["0020000D"]["Value"][0] for item in found]

    for level in ("studies", "series", "instances"):
        assert await search(f"{level}?limit=1") == (200, [studies["seen"]]), level
        assert await search(f"{level}?limit=1&offset=1") == (204, []), level
