"""The portal under the access policy, real processes (registry with the policy, a hospital's repository, the
portal signing in at a real OpenID Connect provider): the page says why a patient is not shown and offers
break-glass; a grant opens the record for that user only and is listed for review on the admin page; an
opted-out patient gets no break-glass; off the trusted networks the sign-in must be multi-factor (acr)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from aiohttp.test_utils import make_mocked_request
from lxml import html

from consumer.client import SoapClient
from consumer.client.source import document_entry, provide_and_register, submission_package
from consumer.portal.access import UNSEEN_REASON, needs_second_factor
from consumer.portal.settings import PortalSettings
from tests.conftest import ROOT, free_port, start_registry_process
from tests.messages import valid_nhs_number
from tests.policy.test_access_policy_e2e import HOSPITALS, NHS_OID, adt
from tests.portal.conftest import (
    CLIENT_SECRET,
    new_user,
    provider_round_trip,
    register_client,
    sign_in,
    start_portal_process,
)
from tests.repository.conftest import start_repository_process


@dataclass
class Setup:
    registry: object
    repository: object
    portal: object
    policy: object
    database_url: str
    iam: object
    client: object


def write_policy(folder) -> object:
    lines = ['anonymous = "permit"  # the portal does not send XUA assertions yet: its user is checked by the gate']
    for h in HOSPITALS.values():
        lines += ["[[organisations]]", f'id = "{h.org}"', f'names = ["{h.name}"]',
                  f'repositories = ["{h.repository_unique_id}"]', f'feeds = ["{h.namespace}"]']
    path = folder / "policy.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(registry_database_url, iam_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("portal-policy")
    policy = write_policy(tmp)
    started = []
    try:
        registry = start_registry_process(registry_database_url, "--affinity-domain-oid", NHS_OID,
                                          "--access-policy", str(policy))
        started.append(registry)
        b = HOSPITALS["B"]
        repository = start_repository_process(
            registry_database_url, registry.url, tmp / "repository-b", repository_unique_id=b.repository_unique_id,
            extra=("--access-policy-url", f"http://127.0.0.1:{registry.port}/policy/decisions"))
        started.append(repository)
        port = free_port()
        client = register_client(iam_server, f"http://127.0.0.1:{port}/auth/callback", "xds-portal-policy")
        portal = start_portal_process(
            registry_database_url, port, tmp / "portal.log", "--registries", f"Region|{registry.url}",
            "--hospitals", f"{b.name}|{b.repository_unique_id}|{repository.url}|{b.hospital_number_oid}",
            "--registry-mllp", f"127.0.0.1:{registry.mllp_port}", "--admin-role", "integration",
            "--oidc-issuer", iam_server.url, "--oidc-client-id", "xds-portal-policy",
            "--oidc-client-secret", CLIENT_SECRET, "--oidc-role-claim", "groups:role-",
            "--oidc-organisation-claim", "groups:org-", "--query-deadline", "5",
            "--access-policy-url", f"http://127.0.0.1:{registry.port}/policy")
        started.append(portal)
        yield Setup(registry, repository, portal, policy, registry_database_url, iam_server, client)
    finally:
        for service in reversed(started):
            service.stop()


async def patient_with_a_report_at_b(setup: Setup) -> tuple[str, str]:
    nhs = valid_nhs_number()
    region = type("R", (), {"registry": setup.registry})()
    await adt(region, "B", "A01", nhs)
    patient = f"{nhs}^^^&{NHS_OID}&ISO"
    entry = document_entry(patient, "text/plain", title="discharge letter")
    package = submission_package(patient, [entry], source_id=HOSPITALS["B"].org + ".3")
    async with SoapClient(timeout=30) as client:
        result = await provide_and_register(client, setup.repository.url, package, {entry.entry_uuid: b"letter\n"})
    assert result.status.endswith("Success"), result.errors
    return nhs, entry.unique_id


def clinician(setup: Setup, hospital: str, name: str) -> requests.Session:
    user = new_user(setup.iam, name, ["role-clinician", f"org-{hospital}"])
    return sign_in(setup.iam, setup.client, user, setup.portal.url)


def test_no_relationship_is_said_and_break_glass_opens_the_record_for_that_user(setup):
    nhs, letter = asyncio.run(patient_with_a_report_at_b(setup))
    at_b = clinician(setup, "Hospital B", f"Dr B {uuid.uuid4().hex[:6]}")
    page = at_b.get(f"{setup.portal.url}/patients/{nhs}", timeout=60)
    assert page.status_code == 200 and letter in page.text

    at_c = clinician(setup, "Hospital C", f"Dr C {uuid.uuid4().hex[:6]}")
    page = at_c.get(f"{setup.portal.url}/patients/{nhs}", timeout=60)
    assert page.status_code == 403 and "no care relationship" in page.text and letter not in page.text
    report = f"{setup.portal.url}/documents/{HOSPITALS['B'].repository_unique_id}/{letter}"
    assert at_b.get(report, timeout=60).status_code == 200
    denied = at_c.get(report, timeout=60)  # the report's link (or a guessed uniqueId) does not get around it
    assert denied.status_code == 403 and UNSEEN_REASON in denied.text and "letter" not in denied.text
    # A guessed uniqueId or study UID gets the very answer a denied one gets: neither tells which exist.
    guessed_report = at_c.get(f"{setup.portal.url}/documents/{HOSPITALS['B'].repository_unique_id}/"
                              f"2.25.{uuid.uuid4().int}", timeout=60)
    assert (guessed_report.status_code, guessed_report.text) == (403, denied.text)
    guessed = at_c.get(f"{setup.portal.url}/dicomweb/studies/2.25.{uuid.uuid4().int}/metadata", timeout=60)
    assert guessed.status_code == 403 and guessed.text == denied.text
    # The viewer opened on a study, and the study's state, are asked of the policy first: the same words again.
    study = f"2.25.{uuid.uuid4().int}"
    viewer_page = at_c.get(f"{setup.portal.url}/viewer/viewer?StudyInstanceUIDs={study}", timeout=60)
    said = html.fromstring(viewer_page.text).xpath("//section[@class='study-unavailable']/p[@class='error']")[0]
    said = said.text_content()
    assert viewer_page.status_code == 403 and "Study not available" in viewer_page.text and said == UNSEEN_REASON
    state = at_c.get(f"{setup.portal.url}/api/studies/{study}", timeout=60)
    assert state.status_code == 403 and state.json()["state"] == "not available"
    assert state.json()["reason"] == UNSEEN_REASON
    api = at_c.get(f"{setup.portal.url}/api/patients/{nhs}/documents", timeout=60)
    assert api.status_code == 403 and api.json()["break_glass"] is True and letter not in api.text
    [form] = [f for f in html.fromstring(page.text).forms if (f.action or "").endswith("/break-glass")]
    codes = [o for o in form.inputs["reason_code"].value_options if o]
    assert "EMERGENCY" in codes

    fields = dict(form.fields)
    refused = at_c.post(f"{setup.portal.url}{form.action}", data={**fields, "reason_code": "EMERGENCY",
                                                                  "reason_text": ""}, timeout=60)
    assert refused.status_code == 403 and "both required" in refused.text
    no_csrf = at_c.post(f"{setup.portal.url}{form.action}", data={"reason_code": "EMERGENCY", "reason_text": "x"},
                        timeout=60)
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
    granted = at_c.post(f"{setup.portal.url}{form.action}",
                        data={**fields, "reason_code": "EMERGENCY", "reason_text": "collapsed in our ED"}, timeout=60)
    assert granted.status_code == 200 and granted.url.endswith(f"/patients/{nhs}") and letter in granted.text
    assert at_c.get(report, timeout=60).status_code == 200

    colleague = clinician(setup, "Hospital C", f"Nurse C {uuid.uuid4().hex[:6]}")
    assert colleague.get(f"{setup.portal.url}/patients/{nhs}", timeout=60).status_code == 403

    # The admin page lists the grant for review; marking it reviewed takes it off the list.
    admin = sign_in(setup.iam, setup.client, new_user(setup.iam, "Ian Admin", ["role-integration", "org-Region"]),
                    setup.portal.url)
    page = admin.get(f"{setup.portal.url}/admin", timeout=60)
    assert page.status_code == 200 and "collapsed in our ED" in page.text
    review = next(f for f in html.fromstring(page.text).forms if f.action.endswith("/reviewed")
                  and "collapsed" in f.getparent().getparent().text_content())
    done = admin.post(f"{setup.portal.url}{review.action}", data=dict(review.fields), timeout=60)
    assert done.status_code == 200 and "collapsed in our ED" not in done.text


def test_an_opted_out_patient_gets_no_break_glass(setup):
    nhs, letter = asyncio.run(patient_with_a_report_at_b(setup))
    done = subprocess.run([sys.executable, "-m", "registry.cli", "policy", "--database-url", setup.database_url,
                           "opt-out", "--patient", f"{nhs}^^^&{NHS_OID}&ISO", "--by", "admin"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    at_c = clinician(setup, "Hospital C", f"Dr C {uuid.uuid4().hex[:6]}")
    page = at_c.get(f"{setup.portal.url}/patients/{nhs}", timeout=60)
    assert page.status_code == 403 and "opted out" in page.text and letter not in page.text
    assert not [f for f in html.fromstring(page.text).forms if (f.action or "").endswith("/break-glass")]


def test_off_the_trusted_networks_the_sign_in_must_be_multi_factor(setup, tmp_path):
    port = free_port()
    client = register_client(setup.iam, f"http://127.0.0.1:{port}/auth/callback", "xds-portal-policy-mfa")
    portal = start_portal_process(
        setup.database_url, port, tmp_path / "portal.log", "--registries", f"Region|{setup.registry.url}",
        "--oidc-issuer", setup.iam.url, "--oidc-client-id", "xds-portal-policy-mfa",
        "--oidc-client-secret", CLIENT_SECRET, "--oidc-role-claim", "groups:role-",
        "--oidc-organisation-claim", "groups:org-", "--trusted-networks", "10.0.0.0/8", "--mfa-acr", "mfa,hwk")
    try:
        start = requests.get(f"{portal.url}/login", allow_redirects=False, timeout=30)
        assert parse_qs(urlsplit(start.headers["Location"]).query)["acr_values"] == ["mfa hwk"]
        user = new_user(setup.iam, "Dr Remote", ["role-clinician", "org-Hospital A"])
        _browser, answer = provider_round_trip(setup.iam, client, user, portal.url)
        assert answer.status_code == 403 and "second factor" in answer.text  # the provider gave no mfa acr
    finally:
        portal.stop()


def test_second_factor_rule():
    settings = PortalSettings(trusted_networks="10.0.0.0/8", mfa_acr="mfa")
    portal = type("P", (), {"settings": settings})()
    inside = make_mocked_request("GET", "/", transport=_transport("10.1.2.3"))
    outside = make_mocked_request("GET", "/", transport=_transport("192.0.2.7"))
    assert not needs_second_factor(portal, inside, None)
    assert needs_second_factor(portal, outside, None) and needs_second_factor(portal, outside, "pwd")
    assert not needs_second_factor(portal, outside, "mfa")
    nowhere = type("P", (), {"settings": PortalSettings()})()
    assert not needs_second_factor(nowhere, outside, None)  # no trusted networks configured: no check


def _transport(address: str):
    class Transport:
        def get_extra_info(self, name, default=None):
            return (address, 50000) if name == "peername" else default

        def is_closing(self):
            return False

    return Transport()
