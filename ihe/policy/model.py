"""The access policy's plain data: who asks, about which patient and document, and what the policy says.

Everything here is immutable and free of I/O, so :func:`ihe.policy.decide.decide` can be tested with
nothing but these values.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum


class Anonymous(StrEnum):
    """What happens to a request whose requester is unknown (no XUA identity, no configured node)."""

    DENY = "deny"
    PERMIT = "permit"


@dataclass(frozen=True, slots=True)
class Requester:
    """The identity the policy decides for: from an XUA assertion, a configured node, or nobody."""

    organisation: str | None = None  # as asserted: urn:oid:..., a bare OID or a name
    user: str | None = None
    role: str | None = None  # a code (SNOMED CT from XUA, the identity provider's role name from the portal)
    purpose: str | None = None  # HL7 PurposeOfUse (TREATMENT, EMERGENCY, ...)
    source: str = "anonymous"  # xua | node | session | anonymous
    node: str | None = None  # the caller's network address, mapped by the policy's [[nodes]]
    organisation_name: str | None = None  # the assertion's organization (a name), when its id is not a member's
    certificate: str | None = None  # the subject CN of the caller's verified TLS client certificate
    certificate_sha256: str | None = None  # and its SHA-256 fingerprint (lower-case hex)

    def as_json(self) -> dict:
        return {"organisation": self.organisation, "user": self.user, "role": self.role,
                "purpose": self.purpose, "source": self.source, "node": self.node,
                "organisation_name": self.organisation_name, "certificate": self.certificate,
                "certificate_sha256": self.certificate_sha256}

    @classmethod
    def from_json(cls, value: dict) -> Requester:
        def text(key: str) -> str | None:
            v = value.get(key)
            return str(v) if v not in (None, "") else None

        return cls(organisation=text("organisation"), user=text("user"), role=text("role"), purpose=text("purpose"),
                   source=text("source") or "anonymous", node=text("node"),
                   organisation_name=text("organisation_name"), certificate=text("certificate"),
                   certificate_sha256=text("certificate_sha256"))


@dataclass(frozen=True, slots=True)
class DocumentFacts:
    """What the policy reads of a document: whose it is and its codes ('code^^^scheme', as the registry keeps them)."""

    owner: str | None  # the organisation id holding it (by repositoryUniqueId / sourceId), None when unknown
    confidentiality: tuple[str, ...] = ()
    class_code: tuple[str, ...] = ()
    type_code: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Relationship:
    """A care relationship of an organisation with the patient; ``expires`` None while it lasts."""

    organisation: str
    origin: str  # "ADT A01", "referral", ...
    expires: datetime | None = None


@dataclass(frozen=True, slots=True)
class BreakGlass:
    """An emergency access granted to one user of one organisation, until ``expires``."""

    organisation: str
    user: str
    expires: datetime


@dataclass(frozen=True, slots=True)
class PatientFacts:
    """What the registry knows of one patient that the policy needs."""

    relationships: tuple[Relationship, ...] = ()
    opted_out: bool = False
    grants: tuple[BreakGlass, ...] = ()


@dataclass(frozen=True, slots=True)
class Organisation:
    """A member of the region: its id (OID), the names it is asserted by, and what it runs."""

    id: str
    names: frozenset[str] = frozenset()  # aliases: display name, urn:oid:ID, ...
    repositories: frozenset[str] = frozenset()  # repositoryUniqueIds (repositories and imaging sources)
    sources: frozenset[str] = frozenset()  # submission set sourceIds
    feeds: frozenset[str] = frozenset()  # ADT MSH-4 sending facility (namespace or universal id)


@dataclass(frozen=True, slots=True)
class Restriction:
    """Documents with any of these codes are only for the listed organisations or roles."""

    name: str
    confidentiality: frozenset[str] = frozenset()
    class_codes: frozenset[str] = frozenset()
    type_codes: frozenset[str] = frozenset()
    organisations: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()

    def matches(self, doc: DocumentFacts) -> bool:
        return bool(self.confidentiality & set(doc.confidentiality) or self.class_codes & set(doc.class_code)
                    or self.type_codes & set(doc.type_code))


@dataclass(frozen=True, slots=True)
class Node:
    """A caller without an XUA identity is ``organisation`` (with ``role``) when its verified TLS client
    certificate has this subject CN or fingerprint, or, failing those, when it calls from ``network``.
    A node without an organisation (the portal: its requests carry its user's XUA) may only use the
    registry's ``policy_endpoints``."""

    organisation: str | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    certificate_cn: str | None = None
    certificate_sha256: str | None = None
    role: str | None = None
    policy_endpoints: frozenset[str] = frozenset()  # registry /policy/* endpoints it may call: decisions, portal

    def names_certificate(self, requester: Requester) -> bool:
        cn, sha = self.certificate_cn, self.certificate_sha256
        return bool((cn is not None and requester.certificate == cn)
                    or (sha is not None and requester.certificate_sha256 == sha))

    def has_address(self, address: str | None) -> bool:
        if self.network is None or not address:
            return False
        try:
            return ipaddress.ip_address(address) in self.network
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The region's access policy (a TOML file, see ihe.policy.config)."""

    organisations: tuple[Organisation, ...] = ()
    relationship_after_discharge: timedelta = timedelta(days=30)
    referral_lifetime: timedelta = timedelta(days=90)
    break_glass_lifetime: timedelta = timedelta(hours=4)
    break_glass_when_opted_out: bool = False
    break_glass_reasons: tuple[tuple[str, str], ...] = (
        ("EMERGENCY", "Emergency treatment, patient unable to consent"),
        ("UNSCHEDULED", "Unscheduled care, referral not yet recorded"),
        ("SAFEGUARDING", "Safeguarding concern"),
    )
    anonymous: Anonymous = Anonymous.DENY
    restrictions: tuple[Restriction, ...] = ()
    nodes: tuple[Node, ...] = ()
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    mfa_acr: frozenset[str] = frozenset()
    # BPPC-style consent documents: a DocumentEntry of one of these formatCodes whose eventCodeList names an
    # opt-out (opt-in) policy records the patient's choice when it is registered ('code^^^scheme').
    consent_format_codes: frozenset[str] = frozenset({"urn:ihe:iti:bppc:2007^^^1.3.6.1.4.1.19376.1.2.3",
                                                      "urn:ihe:iti:bppc-sd:2007^^^1.3.6.1.4.1.19376.1.2.3"})
    opt_out_policies: frozenset[str] = frozenset()
    opt_in_policies: frozenset[str] = frozenset()
    _by_name: dict[str, Organisation] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        index: dict[str, Organisation] = {}
        for org in self.organisations:
            for name in (org.id, f"urn:oid:{org.id}", *org.names):
                index[name.strip().lower()] = org
        object.__setattr__(self, "_by_name", index)

    def organisation(self, name: str | None) -> Organisation | None:
        """The member organisation ``name`` denotes (id, urn:oid:id or an alias), None when none does."""
        if not name:
            return None
        return self._by_name.get(name.strip().lower())

    def organisation_of(self, requester: Requester) -> Organisation | None:
        """The member a requester belongs to: by its organisation id, else by the organisation name it asserts
        (both come from the same signed assertion)."""
        return self.organisation(requester.organisation) or self.organisation(requester.organisation_name)

    def owner_of_repository(self, repository_unique_id: str | None) -> str | None:
        return next((o.id for o in self.organisations if repository_unique_id in o.repositories), None)

    def owner_of_source(self, source_id: str | None) -> str | None:
        return next((o.id for o in self.organisations if source_id in o.sources), None)

    def organisation_of_feed(self, *facility: str | None) -> str | None:
        """The organisation whose ADT feed this is (MSH-4 namespace or universal id)."""
        names = {f.strip().lower() for f in facility if f}
        return next((o.id for o in self.organisations if names & {x.lower() for x in o.feeds}), None)

    def node_of(self, requester: Requester) -> Node | None:
        """The configured node a caller is: by its certificate first (the stronger name), else by its address."""
        nodes = [n for n in self.nodes if n.organisation is not None]
        return (next((n for n in nodes if n.names_certificate(requester)), None)
                or next((n for n in nodes if n.has_address(requester.node)), None))

    def organisation_of_node(self, address: str | None) -> str | None:
        node = self.node_of(Requester(node=address))
        return node.organisation if node is not None else None

    def is_trusted_network(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in net for net in self.trusted_networks)


@dataclass(frozen=True, slots=True)
class Decision:
    """Permit or deny, with the reason a person can read (shown to the requester and audited)."""

    permit: bool
    reason: str
    basis: str = ""  # own | relationship | break-glass | anonymous | ... : for audit and tests

    def as_json(self) -> dict:
        return {"permit": self.permit, "reason": self.reason, "basis": self.basis}

    def said_to_requester(self) -> str:
        """What a refused requester is told: for a refusal that depends on the object asked for, the same words
        whatever the rule (and as for an object that is not registered), so that the answer does not tell whether
        it exists or what covers it; the reason itself goes to the logs (the registry's, which decided, and the
        refusing service's), and the refused request is audited as a failure."""
        return NOT_AVAILABLE if self.basis in OBJECT_BASES else self.reason


# The bases of refusals that depend on the document or study asked for (the others, no identity or an unknown
# organisation or an unreachable policy, are the same for every object).
OBJECT_BASES = frozenset({"unregistered", "no-relationship", "opted-out", "restricted"})
NOT_AVAILABLE = "not available to this requester (not registered in the region, or not permitted by its access policy)"
