"""What every node (registry, repository, imaging source, portal) is configured with besides its own work:
its TLS identity (ihe.tls.TLS_OPTIONS) and where its audit trail goes (ihe.audit.auditor.AUDIT_OPTIONS).

The services' settings dataclasses inherit these fields, so an option added here reaches all of them at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True, kw_only=True)
class NodeSettings:
    audit_repository: str | None = None
    audit_spool_dir: Path | None = None
    audit_spool_max_bytes: int = 256 * 1024 * 1024
    audit_ca_file: str | None = None
    audit_tls_cert: str | None = None
    audit_tls_key: str | None = None
    audit_source_id: str | None = None
    audit_ack: str = "repository"

    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_pin: str | None = None
