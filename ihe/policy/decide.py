"""The regional sharing agreement as one pure function: (requester, patient, document) -> permit / deny + reason.

Every handler that lists or serves a document asks :func:`decide`; none decides itself. The order of
the rules is the agreement's:

1. an unknown requester gets the configured anonymous default (deny unless configured otherwise);
2. a requester whose organisation is not a member of the region is denied;
3. a restricted document (by confidentialityCode, classCode or typeCode) is only for the rule's
   organisations or roles; the source hospital counts as listed;
4. the source hospital always sees its own documents;
5. after the patient opted out nobody else does (break-glass neither, unless the policy allows it);
6. an organisation with a current care relationship does;
7. so does a user holding a current break-glass grant for this patient;
8. nobody else.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from ihe.policy.model import Anonymous, DocumentFacts, PatientFacts, PolicyConfig, Requester
from ihe.policy.model import Decision as Decision

__all__ = ["Decision", "active_grant", "decide", "effective", "has_relationship"]


def has_relationship(facts: PatientFacts, organisation: str, now: datetime) -> bool:
    return any(r.organisation == organisation and (r.expires is None or r.expires > now) for r in facts.relationships)


def active_grant(facts: PatientFacts, organisation: str, user: str | None, now: datetime) -> bool:
    return user is not None and any(g.organisation == organisation and g.user == user and g.expires > now
                                    for g in facts.grants)


def effective(config: PolicyConfig, requester: Requester) -> Requester:
    """A requester without an asserted organisation is its node's organisation (and role) when the policy
    names the node, by its TLS client certificate or its address."""
    if requester.organisation is None and (node := config.node_of(requester)) is not None and node.organisation:
        return replace(requester, organisation=node.organisation, role=requester.role or node.role, source="node")
    return requester


def decide(config: PolicyConfig, requester: Requester, facts: PatientFacts, document: DocumentFacts | None,
           now: datetime) -> Decision:
    """May ``requester`` see ``document`` (None: the patient's record as such) of the patient ``facts`` describe?"""
    requester = effective(config, requester)
    if requester.organisation is None:
        if config.anonymous is Anonymous.PERMIT:
            return Decision(True, "anonymous requests are permitted by the configured policy", "anonymous")
        return Decision(False, "the request carries no identity (XUA assertion or a known node)", "anonymous")
    org = config.organisation_of(requester)
    if org is None:
        return Decision(False, f"organisation {requester.organisation} is not a member of the region", "unknown")
    own = document is not None and document.owner == org.id
    if document is not None:
        for rule in config.restrictions:
            if rule.matches(document) and not (own or org.id in rule.organisations
                                               or (requester.role is not None and requester.role in rule.roles)):
                return Decision(False, f"the document is restricted ({rule.name}) to other organisations or roles",
                                "restricted")
    if own:
        return Decision(True, "the requester's organisation is the document's source", "own")
    grant = active_grant(facts, org.id, requester.user, now)
    if facts.opted_out:
        if grant and config.break_glass_when_opted_out:
            return Decision(True, "break-glass access (the patient opted out; the policy allows emergencies)",
                            "break-glass")
        return Decision(False, "the patient has opted out of sharing", "opted-out")
    if has_relationship(facts, org.id, now):
        return Decision(True, "the organisation has a care relationship with the patient", "relationship")
    if grant:
        return Decision(True, "break-glass access granted to this user", "break-glass")
    return Decision(False, "the organisation has no care relationship with the patient", "no-relationship")
