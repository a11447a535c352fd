"""Repository configuration: the options of ``xds-repository`` and the settings they resolve to.

One process per hospital: each has its own repositoryUniqueId, storage folder and port; they
may share one PostgreSQL database (every row names its repository).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ihe.audit.auditor import AUDIT_OPTIONS
from ihe.config import Option
from ihe.node import NodeSettings
from ihe.tls import TLS_OPTIONS
from ihe.xua.policy import xua_mode

GIB = 1024 * 1024 * 1024

OPTIONS: list[Option] = [
    Option("host", "address to listen on for HTTP (SOAP)", "127.0.0.1"),
    Option("port", "HTTP port for ITI-41 and ITI-43 (endpoint path /repository)", 8020, int),
    Option("repository-unique-id", "this repository's repositoryUniqueId (an OID, one per hospital); required"),
    Option("registry-url", "ITI-42 endpoint of the Document Registry", "http://127.0.0.1:8010/registry"),
    Option("registry-timeout", "seconds to wait for the registry's answer to ITI-42", 120.0, float),
    Option("storage-dir", "folder holding this repository's documents (content-addressed)", "data/repository/storage",
           Path),
    Option("database-url", "PostgreSQL URL; when absent an embedded PostgreSQL is started in --data-dir"),
    Option("data-dir", "folder for the embedded PostgreSQL's data", "data/repository", Path),
    Option("max-document-bytes", "largest document accepted, in bytes", 2 * GIB, int),
    Option("max-request-bytes", "largest ITI-41 request accepted (all documents together), in bytes", 4 * GIB, int),
    Option("max-xml-bytes", "largest SOAP envelope (metadata, inline documents) accepted, in bytes",
           64 * 1024 * 1024, int),
    Option("no-fsync", "do not fsync documents before registering them (faster, not crash-safe; tests only)",
           flag=True),
    Option("recovery-interval", "seconds between retries to settle submissions whose registration outcome is "
           "unknown", 30.0, float),
    Option("pool-size", "PostgreSQL connections per process", 10, int),
    Option("log-level", "logging level", "INFO"),
    Option("xua", "XUA (ITI-40) SAML assertions on this service's endpoints: required, optional (checked when "
           "sent) or off (mutual TLS alone)", "off", xua_mode),
    Option("xua-trust", "TOML file with the XUA audience (affinity domain) and the trusted issuers' certificates",
           None, Path),
    Option("access-policy-url", "the registry's access decision endpoint (http://REGISTRY:8010/policy/decisions); "
           "when set every retrieval is asked there first and refused when denied; when absent there is no access "
           "policy"),
    Option("access-policy-cache", "seconds a permit of the access policy is reused for the same requester and "
           "document or study (a viewer asks for every frame); denials are never reused", 10.0, float),
    *AUDIT_OPTIONS,
    *TLS_OPTIONS,
]


@dataclass(slots=True)
class RepositorySettings(NodeSettings):  # + the TLS and audit fields every node has
    repository_unique_id: str = ""
    host: str = "127.0.0.1"
    port: int = 8020
    registry_url: str = "http://127.0.0.1:8010/registry"
    registry_timeout: float = 120.0
    storage_dir: Path = Path("data/repository/storage")
    database_url: str | None = None
    data_dir: Path = Path("data/repository")
    max_document_bytes: int = 2 * GIB
    max_request_bytes: int = 4 * GIB
    max_xml_bytes: int = 64 * 1024 * 1024
    no_fsync: bool = False
    recovery_interval: float = 30.0
    pool_size: int = 10
    log_level: str = "INFO"
    xua: str = "off"
    xua_trust: Path | None = None
    access_policy_url: str | None = None
    access_policy_cache: float = 10.0


    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RepositorySettings:
        return cls(**{k: v for k, v in values.items() if v is not None})

    def problems(self) -> list[str]:
        """Configuration mistakes that must stop the process at start."""
        from ihe.metadata.validate import is_oid

        found = []
        if not self.repository_unique_id:
            found.append("--repository-unique-id is required (this repository's OID)")
        elif not is_oid(self.repository_unique_id):
            found.append(f"--repository-unique-id {self.repository_unique_id!r} is not an OID")
        if not self.registry_url.startswith(("http://", "https://")):
            found.append(f"--registry-url {self.registry_url!r} is not an http(s) URL")
        from ihe.xua.policy import policy_problem

        if problem := policy_problem(self.xua, self.xua_trust):
            found.append(problem)
        return found
