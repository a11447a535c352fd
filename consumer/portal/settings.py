"""Portal configuration: the options of ``xds-portal`` and the parsed region description."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ihe.config import Option
from ihe.node import NodeSettings
from ihe.tls import TLS_OPTIONS

OPTIONS: list[Option] = [
    Option("host", "address to listen on", "127.0.0.1"),
    Option("port", "HTTP port of the portal", 8090, int),
    Option("public-url", "base URL users reach the portal by (e.g. https://portal.example.org); default "
           "http(s)://HOST:PORT. Cookies are marked Secure when it is https"),
    Option("database-url", "PostgreSQL URL (sessions, manifest cache); when absent an embedded PostgreSQL is "
           "started in --data-dir"),
    Option("data-dir", "folder for the embedded PostgreSQL's data", "data/portal", Path),
    Option("registries", "registries queried with ITI-18, as NAME|URL separated by ';' (a TOML list works too)"),
    Option("hospitals", "the region's hospitals as NAME|REPOSITORY_UNIQUE_ID|REPOSITORY_URL|HOSPITAL_NUMBER_OID "
           "separated by ';' (a TOML list works too); ITI-43 goes to REPOSITORY_URL, hospital numbers of "
           "HOSPITAL_NUMBER_OID are resolved with PIX (ITI-9)"),
    Option("pacs", "each hospital's PACS that studies are imported into, as HOSPITAL|HOST|PORT|AE_TITLE "
           "separated by ';' (a TOML list works too); HOSPITAL is a name of --hospitals"),
    Option("import-ae-title", "the portal's own AE title when it sends imported studies (C-STORE)", "XDS-PORTAL"),
    Option("affinity-domain-oid", "assigning authority OID of the affinity domain patient id (the NHS number)",
           "2.16.840.1.113883.2.1.4.1"),
    Option("registry-mllp", "HOST:PORT of the registry's MLLP listener for PIX (ITI-9) and PDQ (ITI-21)"),
    Option("oidc-issuer", "OpenID Connect issuer URL (its /.well-known/openid-configuration is read)"),
    Option("oidc-client-id", "OpenID Connect client id of the portal"),
    Option("oidc-client-secret", "OpenID Connect client secret of the portal"),
    Option("oidc-redirect-url", "redirect URL registered at the provider; default PUBLIC-URL/auth/callback"),
    Option("oidc-scope", "scopes asked for", "openid profile email groups"),
    Option("oidc-role-claim", "claim naming the user's role (first value of a list)", "groups"),
    Option("oidc-organisation-claim", "claim naming the user's organisation", "organization"),
    Option("session-idle", "seconds without a request after which a session ends", 1800, int),
    Option("session-lifetime", "seconds after sign-in after which a session ends whatever happens", 43200, int),
    Option("query-deadline", "seconds every source (registry, repository) has to answer before its rows are "
           "marked unreachable", 5.0, float),
    Option("admin-role", "role (from the identity provider) allowed to open the registry browser at /admin; "
           "when absent nobody may"),
    Option("imaging-sources", "the hospitals' imaging sources as HOSPITAL_NAME|BASE_URL separated by ';' (a TOML "
           "list works too); the registry browser shows each one's publishing status (BASE_URL/status)"),
    Option("access-policy-url", "the registry's access policy endpoints (http://REGISTRY:8010/policy): before a "
           "patient's list is shown the portal asks whether the user's organisation may see the patient, and offers "
           "break-glass when not; when absent the portal shows what the registry answers"),
    Option("access-policy-cache", "seconds a permit for a report or study is reused for the same user (the viewer "
           "asks for every frame through the DICOMweb proxy); denials are never reused", 10.0, float),
    Option("trusted-networks", "networks (CIDR, comma-separated) from which a password sign-in is enough; from "
           "anywhere else the sign-in must carry one of --mfa-acr (multi-factor); when absent no check"),
    Option("mfa-acr", "the identity provider's acr values meaning multi-factor authentication, comma-separated "
           "(asked for as acr_values off the trusted networks)", "mfa"),
    Option("pool-size", "PostgreSQL connections", 10, int),
    Option("log-level", "logging level", "INFO"),
    Option("audit-database-url", "PostgreSQL URL of the ATNA audit record repository's database (xds-audit), read "
           "by the admin page's audit search (/admin/audit); when absent that page says it is not configured"),
    *TLS_OPTIONS,
]


def _more_options() -> list[Option]:
    """XUA issuing (consumer.portal.xua) and ATNA audit (ihe.audit) options, shared with their modules."""
    from consumer.portal.xua import XUA_OPTIONS
    from ihe.audit.auditor import AUDIT_OPTIONS

    return [*XUA_OPTIONS, *AUDIT_OPTIONS]


OPTIONS += _more_options()


@dataclass(frozen=True, slots=True)
class Registry:
    name: str
    url: str


@dataclass(frozen=True, slots=True)
class Hospital:
    name: str
    repository_unique_id: str
    repository_url: str
    patient_id_oid: str | None = None


def _entries(value: Any) -> list[list[str]]:
    """'a|b;c|d' or ['a|b', 'c|d'] or [['a', 'b'], ...] -> [['a', 'b'], ['c', 'd']]."""
    if not value:
        return []
    items = value.split(";") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        parts = [p.strip() for p in item.split("|")] if isinstance(item, str) else [str(p).strip() for p in item]
        if any(parts):
            out.append(parts)
    return out


def parse_registries(value: Any) -> list[Registry]:
    registries = []
    for parts in _entries(value):
        if len(parts) == 1:
            parts = ["Registry", parts[0]]
        if len(parts) != 2 or not parts[1]:
            raise ValueError(f"registry {'|'.join(parts)!r} is not NAME|URL")
        registries.append(Registry(parts[0] or parts[1], parts[1]))
    return registries


@dataclass(frozen=True, slots=True)
class Pacs:
    hospital: str
    host: str
    port: int
    ae_title: str


def parse_pacs(value: Any) -> list[Pacs]:
    found = []
    for parts in _entries(value):
        if len(parts) != 4 or not all(parts) or not parts[2].isdigit():
            raise ValueError(f"PACS {'|'.join(parts)!r} is not HOSPITAL|HOST|PORT|AE_TITLE")
        found.append(Pacs(parts[0], parts[1], int(parts[2]), parts[3]))
    return found


def parse_hospitals(value: Any) -> list[Hospital]:
    hospitals = []
    for parts in _entries(value):
        if len(parts) not in (3, 4) or not all(parts[:3]):
            raise ValueError(f"hospital {'|'.join(parts)!r} is not NAME|REPOSITORY_UNIQUE_ID|REPOSITORY_URL"
                             "[|HOSPITAL_NUMBER_OID]")
        hospitals.append(Hospital(parts[0], parts[1], parts[2], (parts[3] or None) if len(parts) == 4 else None))
    return hospitals


@dataclass(slots=True)
class PortalSettings(NodeSettings):  # + the TLS and audit fields every node has
    host: str = "127.0.0.1"
    port: int = 8090
    public_url: str | None = None
    database_url: str | None = None
    data_dir: Path = Path("data/portal")
    registries: list[Registry] = field(default_factory=list)
    hospitals: list[Hospital] = field(default_factory=list)
    pacs: list[Pacs] = field(default_factory=list)
    import_ae_title: str = "XDS-PORTAL"
    affinity_domain_oid: str = "2.16.840.1.113883.2.1.4.1"
    registry_mllp: str | None = None
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_redirect_url: str | None = None
    oidc_scope: str = "openid profile email groups"
    oidc_role_claim: str = "groups"
    oidc_organisation_claim: str = "organization"
    session_idle: int = 1800
    session_lifetime: int = 43200
    query_deadline: float = 5.0
    pool_size: int = 10
    log_level: str = "INFO"
    admin_role: str | None = None
    imaging_sources: list[Registry] = field(default_factory=list)  # (hospital name, base URL)
    access_policy_url: str | None = None
    access_policy_cache: float = 10.0
    trusted_networks: str | None = None
    mfa_acr: str = "mfa"
    audit_database_url: str | None = None
    xua_signing_key: str | None = None  # consumer.portal.xua.XUA_OPTIONS
    xua_signing_cert: str | None = None
    xua_issuer: str | None = None
    xua_audience: str | None = None
    xua_lifetime: int = 300
    xua_roles: str | None = None
    xua_organisation_ids: str | None = None
    xua_purpose_of_use: str = "TREATMENT"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PortalSettings:
        values = {k: v for k, v in values.items() if v is not None}
        values["registries"] = parse_registries(values.get("registries"))
        values["hospitals"] = parse_hospitals(values.get("hospitals"))
        values["pacs"] = parse_pacs(values.get("pacs"))
        values["imaging_sources"] = parse_registries(values.get("imaging_sources"))
        return cls(**values)

    @property
    def trusted_network_list(self) -> list:
        import ipaddress

        return [ipaddress.ip_network(n.strip(), strict=False) for n in (self.trusted_networks or "").split(",")
                if n.strip()]

    @property
    def mfa_acr_list(self) -> list[str]:
        return [a.strip() for a in self.mfa_acr.split(",") if a.strip()]

    @property
    def base_url(self) -> str:
        return (self.public_url or f"{'https' if self.tls_cert else 'http'}://{self.host}:{self.port}").rstrip("/")

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")

    @property
    def redirect_url(self) -> str:
        return self.oidc_redirect_url or f"{self.base_url}/auth/callback"

    @property
    def mllp_address(self) -> tuple[str, int] | None:
        if not self.registry_mllp:
            return None
        host, _, port = self.registry_mllp.rpartition(":")
        return (host or "127.0.0.1"), int(port)

    def hospital_by_repository(self, repository_unique_id: str | None) -> Hospital | None:
        return next((h for h in self.hospitals if h.repository_unique_id == repository_unique_id), None)

    def hospital_by_name(self, name: str) -> Hospital | None:
        return next((h for h in self.hospitals if h.name == name), None)

    def pacs_of(self, hospital: str) -> Pacs | None:
        return next((p for p in self.pacs if p.hospital == hospital), None)
