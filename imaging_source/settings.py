"""Imaging Document Source configuration: the options of ``xds-imaging-source`` and their settings."""

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
    Option("host", "address to listen on for HTTP (RAD-69, WADO-URI, WADO-RS, status page)", "127.0.0.1"),
    Option("port", "HTTP port (RAD-69 at /rad69, WADO-URI at /wado, WADO-RS under /dicomweb)", 8040, int),
    Option("public-url", "base URL other hospitals reach this source by (e.g. https://pacs.example.org); "
           "default http(s)://HOST:PORT. The WADO-RS Retrieve URL in manifests is PUBLIC-URL/dicomweb"),
    Option("ae-title", "DICOM AE title of the Storage SCP (also the Retrieve AE Title in manifests)", "XDSI_SOURCE"),
    Option("dicom-host", "address the DICOM Storage SCP listens on", "127.0.0.1"),
    Option("dicom-port", "DICOM port of the Storage SCP (C-ECHO, C-STORE)", 11112, int),
    Option("dicom-workers", "processes sharing the DICOM port (associations are spread over them; the DICOM "
           "stack is CPU-bound in one Python process, so about one per core)", 1, int),
    Option("dicom-max-associations", "DICOM associations served at once per process; more are refused "
           "(transient, local limit exceeded)", 10, int),
    Option("storage-dir", "folder where received DICOM instances are kept", "data/imaging_source/instances", Path),
    Option("database-url", "PostgreSQL URL; when absent an embedded PostgreSQL is started in --data-dir"),
    Option("data-dir", "folder for the embedded PostgreSQL's data", "data/imaging_source", Path),
    Option("repository-unique-id", "this source's repository uniqueId (OID): Retrieve Location UID in manifests "
           "and the RepositoryUniqueId answered in RAD-69", "1.3.6.1.4.1.21367.2017.2.4.1"),
    Option("source-id", "submission set sourceId (OID) of this Imaging Document Source",
           "1.3.6.1.4.1.21367.2017.2.4.2"),
    Option("repository-url", "ITI-41 endpoint of the hospital's XDS.b repository that manifests are published to "
           "(RAD-68); when absent manifests are built but not published"),
    Option("registry-url", "ITI-57 endpoint of the registry (Update Document Set), used to deprecate the manifest "
           "of a study whose instances were all rejected (IOCM)"),
    Option("patient-id-issuer-oid", "assigning authority OID of the hospital number (DICOM Patient ID) when the "
           "instance has no Issuer of Patient ID"),
    Option("patient-id-issuer-namespace", "namespace id of the hospital number's assigning authority", None),
    Option("affinity-domain-oid", "assigning authority OID of the affinity domain patient id, asked of PIX"),
    Option("pix-host", "host of the registry's PIX query (ITI-9) MLLP listener", "127.0.0.1"),
    Option("pix-port", "MLLP port of the registry's PIX query (ITI-9); when absent patients cannot be mapped",
           None, int),
    Option("accession-issuer-oid", "assigning authority OID of accession numbers when the instance has no Issuer "
           "of Accession Number (used in referenceIdList)"),
    Option("class-code", "classCode of manifests as code|scheme|display", "DI|1.2.840.10008.2.16.4|Diagnostic Imaging"),
    Option("type-code", "typeCode of manifests whose study has no Procedure Code, as code|scheme|display",
           "18748-4|2.16.840.1.113883.6.1|Diagnostic imaging study"),
    Option("healthcare-facility-type-code", "healthcareFacilityTypeCode as code|scheme|display",
           "22232009|2.16.840.1.113883.6.96|Hospital"),
    Option("practice-setting-code", "practiceSettingCode as code|scheme|display",
           "394914008|2.16.840.1.113883.6.96|Radiology"),
    Option("confidentiality-code", "confidentialityCode as code|scheme|display", "N|2.16.840.1.113883.5.25|normal"),
    Option("content-type-code", "submission set contentTypeCode as code|scheme|display",
           "18748-4|2.16.840.1.113883.6.1|Diagnostic imaging study"),
    Option("language-code", "languageCode of manifests", "en-GB"),
    Option("quiet-period", "seconds without a new instance after which a study is complete", 30.0, float),
    Option("tracker-interval", "seconds between looks for complete studies and due retries", 1.0, float),
    Option("retry-initial", "seconds before the first retry of a failed publication or patient mapping", 10.0,
           float),
    Option("retry-max", "longest wait between retries, in seconds", 3600.0, float),
    Option("max-body-bytes", "largest SOAP request body accepted, in bytes", 10 * 1024 * 1024, int),
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
class ImagingSourceSettings(NodeSettings):  # + the TLS and audit fields every node has
    host: str = "127.0.0.1"
    port: int = 8040
    public_url: str | None = None
    ae_title: str = "XDSI_SOURCE"
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    dicom_workers: int = 1
    dicom_max_associations: int = 10
    storage_dir: Path = Path("data/imaging_source/instances")
    database_url: str | None = None
    data_dir: Path = Path("data/imaging_source")
    repository_unique_id: str = "1.3.6.1.4.1.21367.2017.2.4.1"
    source_id: str = "1.3.6.1.4.1.21367.2017.2.4.2"
    repository_url: str | None = None
    registry_url: str | None = None
    patient_id_issuer_oid: str | None = None
    patient_id_issuer_namespace: str | None = None
    affinity_domain_oid: str | None = None
    pix_host: str = "127.0.0.1"
    pix_port: int | None = None
    accession_issuer_oid: str | None = None
    class_code: str = "DI|1.2.840.10008.2.16.4|Diagnostic Imaging"
    type_code: str = "18748-4|2.16.840.1.113883.6.1|Diagnostic imaging study"
    healthcare_facility_type_code: str = "22232009|2.16.840.1.113883.6.96|Hospital"
    practice_setting_code: str = "394914008|2.16.840.1.113883.6.96|Radiology"
    confidentiality_code: str = "N|2.16.840.1.113883.5.25|normal"
    content_type_code: str = "18748-4|2.16.840.1.113883.6.1|Diagnostic imaging study"
    language_code: str = "en-GB"
    quiet_period: float = 30.0
    tracker_interval: float = 1.0
    retry_initial: float = 10.0
    retry_max: float = 3600.0
    max_body_bytes: int = 10 * 1024 * 1024
    pool_size: int = 10
    log_level: str = "INFO"
    xua: str = "off"
    xua_trust: Path | None = None
    access_policy_url: str | None = None
    access_policy_cache: float = 10.0


    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ImagingSourceSettings:
        return cls(**{k: v for k, v in values.items() if v is not None})

    @property
    def base_url(self) -> str:
        return (self.public_url or f"{'https' if self.tls_cert else 'http'}://{self.host}:{self.port}").rstrip("/")

    @property
    def wado_rs_url(self) -> str:
        """The WADO-RS base URL put in manifests as Retrieve URL."""
        return f"{self.base_url}/dicomweb"
