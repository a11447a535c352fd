"""The audit link is mutual TLS (RFC 5425): xds-audit with --tls-client-ca stores what a sender presenting a
certificate of that CA sends, and refuses, with one line in its log, a sender without one or with another CA's.
A service's sender presents the node's own certificate (--tls-cert/--tls-key) and trusts its --tls-ca."""

from __future__ import annotations

import logging
import uuid
from types import SimpleNamespace

import pytest

from ihe.audit.auditor import open_auditor, sender_identity
from ihe.audit.messages import ACTION_READ, EV_EXPORT, OUTCOME_SUCCESS, AuditEvent, Participant, patient
from tests.audit.support import Certificates, fetch, migrate_audit, start_audit_process
from tests.deploy.helpers import Output
from tests.tls_support import make_test_pki


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    return make_test_pki(tmp_path_factory.mktemp("pki"), ["audit", "registry"])


@pytest.fixture(scope="module")
def repository(database_url, region):
    migrate_audit(database_url)
    audit = region.nodes["audit"]
    service = start_audit_process(database_url, Certificates(audit.ca, audit.cert, audit.key), client_ca=audit.ca)
    service.output = Output(service.proc)
    service.output.wait_for("syslog over mutual TLS", 30)
    yield service
    service.stop()


def _send(repository, tmp_path, settings: dict, run: str, drain: float):
    auditor = open_auditor(SimpleNamespace(audit_repository=repository.url, audit_spool_dir=tmp_path / "spool",
                                           audit_source_id="mtls-test", **settings), "mtls-test")
    assert auditor is not None
    try:
        auditor.record(AuditEvent(EV_EXPORT, ACTION_READ, OUTCOME_SUCCESS, "mtls-test",
                                  (Participant("tester", True),), (patient(run),)))
        return auditor.sender.drain(drain)
    finally:
        auditor.close()


def test_a_sender_with_the_nodes_certificate_is_stored(repository, region, database_url, tmp_path):
    run = f"MTLS{uuid.uuid4().hex[:8]}^^^&1.2.3&ISO"
    node = region.nodes["registry"]
    assert _send(repository, tmp_path, node.as_dict(), run, 20), "not delivered over mutual TLS"
    assert fetch(database_url, "SELECT 1 FROM audit_record WHERE $1 = ANY(patient_ids)", run)


def test_the_sender_takes_the_nodes_identity_unless_given_its_own():
    node = SimpleNamespace(tls_cert="n.crt", tls_key="n.key", tls_ca="ca.crt")
    assert sender_identity(node) == ("ca.crt", "n.crt", "n.key")
    own = SimpleNamespace(**vars(node), audit_ca_file="a-ca.pem", audit_tls_cert="a.crt", audit_tls_key="a.key")
    assert sender_identity(own) == ("a-ca.pem", "a.crt", "a.key")


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
def test_a_sender_without_a_certificate_of_the_domain_is_refused_with_one_line(repository, region, database_url,
                                                                                tmp_path, caplog, who):
    run = f"MTLS{uuid.uuid4().hex[:8]}^^^&1.2.3&ISO"
    settings = ({"audit_ca_file": str(region.ca)} if who == "no certificate"
                else region.settings(region.other_ca_node).__dict__ | {"tls_pin": None})
    with caplog.at_level(logging.WARNING, logger="ihe.audit"):
        assert not _send(repository, tmp_path, settings, run, 3), "a sender the repository must refuse delivered"
    assert not fetch(database_url, "SELECT 1 FROM audit_record WHERE $1 = ANY(patient_ids)", run)
    expected = ("presented no certificate" if who == "no certificate"
                else "the client's certificate is not issued by the affinity domain's CA")
    line = repository.output.wait_for(expected, 10)
    assert line.count("refused") == 1 and f"syslog-TLS port {repository.port}" in line, line
    assert any("not reachable" in r.getMessage() and "refuses this node's certificate" in r.getMessage()
               for r in caplog.records), caplog.text
