"""Registry configuration: the options of ``xds-registry`` and the settings they resolve to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ihe.audit.auditor import AUDIT_OPTIONS
from ihe.config import Option
from ihe.node import NodeSettings
from ihe.tls import TLS_OPTIONS
from ihe.xua.policy import xua_mode

OPTIONS: list[Option] = [
    Option("host", "address to listen on for HTTP (SOAP)", "127.0.0.1"),
    Option("port", "HTTP port for ITI-42 and ITI-18 (endpoint path /registry)", 8010, int),
    Option("mllp-host", "address to listen on for the HL7 v2 patient identity feed", "127.0.0.1"),
    Option("mllp-port", "MLLP port for the HL7 v2 patient identity feed (ITI-8) and PIX query (ITI-9)",
           2575, int),
    Option("database-url", "PostgreSQL URL; when absent an embedded PostgreSQL is started in --data-dir"),
    Option("data-dir", "folder for the embedded PostgreSQL's data", "data/registry", Path),
    Option("affinity-domain-oid", "assigning authority OID of the affinity domain patient id (e.g. the "
           "NHS number's); when set, XDS patient ids must be in this domain"),
    Option("code-list", "TOML file of the affinity domain's allowed codes; when set, codes are validated",
           None, Path),
    Option("max-query-results", "most objects a stored query returns before XDSTooManyResults", 5000, int),
    Option("max-body-bytes", "largest SOAP request body accepted, in bytes", 50 * 1024 * 1024, int),
    Option("home-community-id", "homeCommunityId (urn:oid:...) of this registry's community, echoed in "
           "query results"),
    Option("pool-size", "PostgreSQL connections per process", 20, int),
    Option("workers", "HTTP worker processes sharing the port (the registry is stateless)", 1, int),
    Option("log-level", "logging level", "INFO"),
    Option("xua", "XUA (ITI-40) SAML assertions on this service's endpoints: required, optional (checked when "
           "sent) or off (mutual TLS alone)", "off", xua_mode),
    Option("xua-trust", "TOML file with the XUA audience (affinity domain) and the trusted issuers' certificates",
           None, Path),
    Option("access-policy", "TOML file of the region's access policy (ihe/policy/config.py, "
           "docs/examples/access-policy.toml); when set, ITI-18 answers are filtered and retrieval points may ask "
           "POST /policy/decisions; when absent there is no access policy", None, Path),
    Option("policy-decision-clients", "networks (CIDR, comma-separated) allowed to ask POST /policy/decisions "
           "(the region's repositories and imaging sources)", "127.0.0.0/8,::1/128"),
    *AUDIT_OPTIONS,
    *TLS_OPTIONS,
]


@dataclass(slots=True)
class RegistrySettings(NodeSettings):  # + the TLS and audit fields every node has
    host: str = "127.0.0.1"
    port: int = 8010
    mllp_host: str = "127.0.0.1"
    mllp_port: int = 2575
    database_url: str | None = None
    data_dir: Path = Path("data/registry")
    affinity_domain_oid: str | None = None
    code_list: Path | None = None
    max_query_results: int = 5000
    max_body_bytes: int = 50 * 1024 * 1024
    home_community_id: str | None = None
    pool_size: int = 20
    workers: int = 1
    log_level: str = "INFO"
    xua: str = "off"
    xua_trust: Path | None = None
    access_policy: Path | None = None
    policy_decision_clients: str = "127.0.0.0/8,::1/128"


    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RegistrySettings:
        return cls(**{k: v for k, v in values.items() if v is not None})
