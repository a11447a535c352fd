"""The decision function alone: every rule of the sharing agreement, permitted and denied."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ihe.policy.config import PolicyConfigError, parse_policy
from ihe.policy.decide import decide
from ihe.policy.model import (
    BreakGlass,
    DocumentFacts,
    PatientFacts,
    Relationship,
    Requester,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
A, B, C = "1.3.6.1.4.1.21367.2026.1", "1.3.6.1.4.1.21367.2026.2", "1.3.6.1.4.1.21367.2026.3"
RESTRICTED = "R^^^2.16.840.1.113883.5.25"
SEXUAL_HEALTH = "SH^^^1.2.3.4"

POLICY = parse_policy({
    "organisations": [
        {"id": A, "names": ["Hospital A"], "repositories": ["1.1"], "feeds": ["HOSPA"]},
        {"id": B, "names": ["Hospital B"], "repositories": ["2.1"], "sources": ["2.3"], "feeds": ["HOSPB"]},
        {"id": C, "names": ["Hospital C"], "repositories": ["3.1"], "feeds": ["HOSPC"]},
    ],
    "restrictions": [{"name": "sexual health", "class-codes": [SEXUAL_HEALTH], "confidentiality": [RESTRICTED],
                      "organisations": [C], "roles": ["GUM-CLINICIAN"]}],
    "nodes": [{"network": "10.3.0.0/16", "organisation": C}],
})


def who(org: str | None, user: str = "dr.x", role: str | None = "309343006") -> Requester:
    return Requester(organisation=org, user=user, role=role, source="xua" if org else "anonymous")


def doc(owner: str = B, *codes: str) -> DocumentFacts:
    return DocumentFacts(owner=owner, confidentiality=tuple(c for c in codes if c == RESTRICTED),
                         class_code=tuple(c for c in codes if c != RESTRICTED))


def test_source_hospital_always_sees_its_own_documents():
    d = decide(POLICY, who(f"urn:oid:{B}"), PatientFacts(opted_out=True), doc(B), NOW)
    assert d.permit and d.basis == "own"


def test_relationship_permits_and_its_absence_denies():
    facts = PatientFacts(relationships=(Relationship(A, "ADT A01"),))
    assert decide(POLICY, who(A), facts, doc(B), NOW).basis == "relationship"
    denied = decide(POLICY, who(C), facts, doc(B), NOW)
    assert not denied.permit and denied.basis == "no-relationship" and "no care relationship" in denied.reason


def test_relationship_expires():
    facts = PatientFacts(relationships=(Relationship(A, "ADT A03", NOW - timedelta(seconds=1)),))
    assert not decide(POLICY, who(A), facts, doc(B), NOW).permit
    facts = PatientFacts(relationships=(Relationship(A, "ADT A03", NOW + timedelta(days=1)),))
    assert decide(POLICY, who(A), facts, doc(B), NOW).permit


def test_organisation_by_name_or_urn():
    facts = PatientFacts(relationships=(Relationship(A, "referral"),))
    assert decide(POLICY, who("Hospital A"), facts, doc(B), NOW).permit
    assert decide(POLICY, who(f"urn:oid:{A}"), facts, doc(B), NOW).permit
    outsider = decide(POLICY, who("urn:oid:9.9.9"), facts, doc(B), NOW)
    assert not outsider.permit and outsider.basis == "unknown"


def test_anonymous_default_is_deny_and_configurable():
    assert not decide(POLICY, Requester(), PatientFacts(), doc(B), NOW).permit
    lenient = parse_policy({"anonymous": "permit"})
    assert decide(lenient, Requester(), PatientFacts(), doc(B), NOW).permit
    with pytest.raises(PolicyConfigError):
        parse_policy({"anonymous": "maybe"})


def test_configured_node_stands_for_its_organisation():
    facts = PatientFacts(relationships=(Relationship(C, "ADT A04"),))
    assert decide(POLICY, Requester(node="10.3.1.2"), facts, doc(B), NOW).basis == "relationship"
    assert not decide(POLICY, Requester(node="10.4.1.2"), facts, doc(B), NOW).permit


def test_opt_out_denies_everyone_but_the_source():
    facts = PatientFacts(relationships=(Relationship(A, "ADT A01"),), opted_out=True,
                         grants=(BreakGlass(A, "dr.x", NOW + timedelta(hours=1)),))
    denied = decide(POLICY, who(A), facts, doc(B), NOW)
    assert not denied.permit and denied.basis == "opted-out"
    assert decide(POLICY, who(B), facts, doc(B), NOW).permit
    emergencies = parse_policy({"organisations": [{"id": A}, {"id": B}], "break-glass-when-opted-out": True})
    assert decide(emergencies, who(A), facts, doc(B), NOW).basis == "break-glass"
    assert not decide(emergencies, who(A, user="dr.y"), facts, doc(B), NOW).permit


def test_break_glass_is_for_its_user_until_it_expires():
    facts = PatientFacts(grants=(BreakGlass(C, "dr.x", NOW + timedelta(minutes=5)),))
    assert decide(POLICY, who(C), facts, doc(B), NOW).basis == "break-glass"
    assert not decide(POLICY, who(C, user="dr.y"), facts, doc(B), NOW).permit
    assert not decide(POLICY, who(A), facts, doc(B), NOW).permit
    assert not decide(POLICY, who(C), facts, doc(B), NOW + timedelta(minutes=6)).permit


def test_restricted_documents_only_for_listed_organisations_or_roles():
    facts = PatientFacts(relationships=(Relationship(A, "ADT A01"), Relationship(C, "ADT A01")))
    for codes in ((SEXUAL_HEALTH,), (RESTRICTED,)):
        denied = decide(POLICY, who(A), facts, doc(B, *codes), NOW)
        assert not denied.permit and denied.basis == "restricted" and "sexual health" in denied.reason
        assert decide(POLICY, who(C), facts, doc(B, *codes), NOW).permit  # listed organisation
        assert decide(POLICY, who(A, role="GUM-CLINICIAN"), facts, doc(B, *codes), NOW).permit  # listed role
        assert decide(POLICY, who(B), facts, doc(B, *codes), NOW).permit  # the source
    assert decide(POLICY, who(A), facts, doc(B, "OTHER^^^1.2.3.4"), NOW).permit


def test_restricted_does_not_override_missing_relationship():
    assert not decide(POLICY, who(C), PatientFacts(), doc(B, SEXUAL_HEALTH), NOW).permit


def test_patient_level_decision_without_a_document():
    facts = PatientFacts(relationships=(Relationship(A, "ADT A01"),))
    assert decide(POLICY, who(A), facts, None, NOW).permit
    assert not decide(POLICY, who(C), facts, None, NOW).permit


def test_policy_file_mistakes_are_named():
    with pytest.raises(PolicyConfigError, match="unknown keys"):
        parse_policy({"organisation": []})
    with pytest.raises(PolicyConfigError, match="needs an id"):
        parse_policy({"organisations": [{"names": ["x"]}]})
    with pytest.raises(PolicyConfigError, match="not in"):
        parse_policy({"organisations": [{"id": A}], "restrictions": [{"class-codes": ["x"], "organisations": [B]}]})
    with pytest.raises(PolicyConfigError, match="matches no code"):
        parse_policy({"restrictions": [{"name": "empty"}]})
    with pytest.raises(PolicyConfigError, match="nodes"):
        parse_policy({"nodes": [{"network": "not a network", "organisation": A}]})


def test_feed_and_repository_owners():
    assert POLICY.organisation_of_feed("HOSPB", None) == B
    assert POLICY.organisation_of_feed("PAS", None) is None
    assert POLICY.owner_of_repository("3.1") == C and POLICY.owner_of_repository("9.9") is None
    assert POLICY.owner_of_source("2.3") == B


def test_the_documented_example_policy_loads():
    from pathlib import Path

    from ihe.policy.config import load_policy_file

    example = load_policy_file(Path(__file__).resolve().parents[2] / "docs" / "examples" / "access-policy.toml")
    assert example.organisation("hospital-b").id == "1.3.6.1.4.1.21367.2026.2"
    assert [r.name for r in example.restrictions] == ["sexual health"]
    assert example.opt_out_policies and example.opt_in_policies


def test_an_assertion_naming_a_member_by_name_only_counts_as_that_member():
    facts = PatientFacts(relationships=(Relationship(A, "ADT A01"),))
    system = Requester(organisation="urn:oid:9.9.9", organisation_name="Hospital A", user="loader", source="xua")
    assert decide(POLICY, system, facts, doc(B), NOW).basis == "relationship"
    stranger = Requester(organisation="urn:oid:9.9.9", organisation_name="Elsewhere", user="x", source="xua")
    assert decide(POLICY, stranger, facts, doc(B), NOW).basis == "unknown"
