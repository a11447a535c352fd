"""``xds-local``: the whole network on one machine, each service its own process.

One PostgreSQL (embedded when no URL is given, data under ``--data-dir``) holds one database per
service, as a small deployment would share a database server. Three hospitals are started, each
with its own repository and imaging document source, around one regional registry, with an
embedded OpenID Connect provider (canaille) for the portal's sign-in. Once every listener
answers, demo data are loaded once (local_network/demo_data.py) and the ready line is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ihe import tls
from ihe.database import resolve_database_url
from local_network import oidc_provider, pki, security
from local_network.readiness import Listener, port_in_use, ready

NHS_NUMBER_OID = "2.16.840.1.113883.2.1.4.1"


@dataclass(frozen=True, slots=True)
class Hospital:
    name: str
    namespace: str  # namespace id of the hospital number's assigning authority (Issuer of Patient ID)
    repository_unique_id: str
    hospital_number_oid: str
    repository_port: int
    imaging_port: int
    dicom_port: int
    ae_title: str


HOSPITALS = (
    Hospital("hospital-a", "HOSPA", "1.3.6.1.4.1.21367.2026.1.1", "1.3.6.1.4.1.21367.2026.1.2", 8020, 8040, 11112,
             "HOSPA_XDSI"),
    Hospital("hospital-b", "HOSPB", "1.3.6.1.4.1.21367.2026.2.1", "1.3.6.1.4.1.21367.2026.2.2", 8021, 8041, 11113,
             "HOSPB_XDSI"),
    Hospital("hospital-c", "HOSPC", "1.3.6.1.4.1.21367.2026.3.1", "1.3.6.1.4.1.21367.2026.3.2", 8022, 8042, 11114,
             "HOSPC_XDSI"),
)


def organisation_id(h: Hospital) -> str:
    """The hospital's organisation OID (its hospital-number OID's parent), as XUA assertions name it."""
    return h.hospital_number_oid.rsplit(".", 1)[0]


def access_policy_file(data_dir: Path, insecure: bool = False) -> Path:
    """The region's access policy (ihe.policy.config), written at the first start; edit it to change the rules.

    Relationships come from each hospital's own ADT feed (MSH-4 its namespace), as the demo data sends them.
    With mutual TLS (the default) a request without an XUA identity is its node, named by its certificate:
    ``[[nodes]]`` make each hospital's repository and imaging source that hospital (a repository recovering its
    entries, an imaging source's own queries see their own documents), and ``anonymous = "deny"`` refuses
    everybody else. Under ``--insecure`` every service calls from 127.0.0.1 and nothing names the caller, so
    the file is written with ``anonymous = "permit"``."""
    path = data_dir / "policy" / "access-policy.toml"
    if path.exists():
        return path
    if insecure:
        head = ["# --insecure: no client certificates name the callers, so requests without an XUA identity are",
                "# permitted (every service calls from 127.0.0.1). Written with mutual TLS (the default), this",
                '# file says anonymous = "deny" and names each node by its certificate.', 'anonymous = "permit"']
    else:
        head = ["# Requests without an XUA identity are their node, named by its TLS client certificate ([[nodes]]",
                '# below); any other is refused (--insecure writes anonymous = "permit": nothing names a caller).',
                'anonymous = "deny"']
    lines = ["# xds-local's access policy (see README: access policy). Written once; edit freely.", *head,
             "relationship-days-after-discharge = 30", "referral-days = 90",
             "break-glass-minutes = 240", "break-glass-when-opted-out = false", ""]
    for h in HOSPITALS:
        lines += ["[[organisations]]", f'id = "{organisation_id(h)}"',
                  f'names = ["{h.name}", "Hospital {h.name[-1].upper()}"]',
                  f'repositories = ["{h.repository_unique_id}"]', f'feeds = ["{h.namespace}"]', ""]
    lines += ["# Example: sexual health reports only for hospital C", "[[restrictions]]", 'name = "sexual health"',
              'class-codes = ["SH^^^1.3.6.1.4.1.21367.2026.0.1"]',
              f'organisations = ["{organisation_id(HOSPITALS[2])}"]', ""]
    lines += ["# The region's nodes by certificate (mutual TLS): a hospital's repository and imaging source act for",
              "# that hospital and ask the registry for decisions (/policy/decisions); the portal asks for its",
              "# signed-in users (decisions before opening a report or study, and the patient-level and break-glass",
              "# endpoints), whose XUA assertion names them, so it has no organisation of its own; the registry",
              "# calls nothing the policy guards.", ""]
    for h in HOSPITALS:
        for kind in ("repository", "imaging"):
            lines += ["[[nodes]]", f'certificate-cn = "{pki.common_name(f"{h.name}-{kind}")}"',
                      f'organisation = "{organisation_id(h)}"', 'policy-endpoints = ["decisions"]', ""]
    lines += ["[[nodes]]", f'certificate-cn = "{pki.common_name("portal")}"',
              'policy-endpoints = ["decisions", "portal"]', ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def anonymous_note(path: Path, insecure: bool) -> str | None:
    """One line at start when requests without an XUA identity are permitted (the policy file says so)."""
    from ihe.policy.config import PolicyConfigError, load_policy_file
    from ihe.policy.model import Anonymous

    try:
        permit = load_policy_file(path).anonymous is Anonymous.PERMIT
    except PolicyConfigError as exc:
        return f"xds-local: {exc}"
    if not permit:
        return None
    if insecure:
        return (f"xds-local: --insecure: the access policy ({path}) permits requests without an XUA identity "
                "(anonymous = \"permit\"): no client certificate names the caller")
    return (f"xds-local: the access policy ({path}) permits requests without an XUA identity (anonymous = "
            "\"permit\", written by an --insecure start); with mutual TLS delete it to get anonymous = \"deny\" "
            "and the nodes named by certificate")


def scheme(args: argparse.Namespace) -> str:
    """The region's HTTP scheme: mutual TLS unless --insecure."""
    return "http" if args.insecure else "https"


def node_names() -> list[str]:
    """Every node that gets a certificate: the services, and xds-local itself (readiness probes, demo loader)."""
    return ["registry", *(f"{h.name}-{kind}" for h in HOSPITALS for kind in ("repository", "imaging")), "portal",
            "audit", "xds-local"]


def tls_args(args: argparse.Namespace, node: str) -> list[str]:
    """The node's --tls-* options (none with --insecure, or before the certificates exist)."""
    pki = getattr(args, "pki", None)
    return [] if pki is None else pki.nodes[node].args()


def database_url(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def ensure_databases(server_url: str, names: list[str]) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        for name in names:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    command: list[str]
    database: str | None  # None: the service keeps no data in PostgreSQL
    listeners: tuple[Listener, ...]  # all must be ready before the network is
    env: dict[str, str] | None = None


def audit_transport(args: argparse.Namespace) -> str:
    """``tls`` (mutual TLS on the region's CA), ``udp`` (--audit-transport udp), or, with --insecure where no
    certificates exist, ``tcp``: plain, unencrypted, but still acknowledged so nothing is lost."""
    if args.audit_transport == "udp":
        return "udp"
    return "tcp" if args.insecure else "tls"


def audit_url(args: argparse.Namespace) -> str:
    """Where every service sends its audit records."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1"}.get(args.host, args.host)
    return f"{audit_transport(args)}://{host}:{args.audit_port + args.port_offset}"


def audit_args(args: argparse.Namespace, creds: security.RegionCredentials | None, node: str) -> list[str]:
    """A service's options sending its audit trail to the region's xds-audit (its spool in its own folder).
    Over TLS the sender presents the node's own certificate and trusts the region's CA (its --tls-*)."""
    if creds is None:
        return []
    return ["--audit-repository", audit_url(args), "--audit-spool-dir", str(args.data_dir / "audit-spool" / node),
            "--audit-source-id", node]


def xua_args(args: argparse.Namespace, creds: security.RegionCredentials | None, kind: str) -> list[str]:
    """A service's XUA policy: ``--xua`` (required by default) with the trust file of its kind."""
    if creds is None or args.xua == "off":
        return []
    return ["--xua", args.xua, "--xua-trust", str(creds.trust_files[kind])]


def services(args: argparse.Namespace, server_url: str,
             creds: security.RegionCredentials | None = None) -> list[Service]:
    """The region's services; ``creds`` (None only to list the ports) adds XUA and audit options."""
    host, o, prefix = args.host, args.port_offset, args.database_prefix
    registry_url = f"{scheme(args)}://{host}:{args.registry_port + o}/registry"
    policy = (["--access-policy", str(access_policy_file(args.data_dir, args.insecure))]
              if args.access_policy == "on" else [])
    decisions = (["--access-policy-url", f"{scheme(args)}://{host}:{args.registry_port + o}/policy/decisions"]
                 if args.access_policy == "on" else [])
    py = sys.executable
    audit_port = args.audit_port + o
    # A stream listener always (readiness probes it): mutual TLS with the audit node's certificate, client
    # certificates from the region's CA required; with --insecure plain TCP. --audit-transport udp adds UDP on
    # the same port number.
    audit_command = [py, "-m", "ihe.audit.cli", "serve", "--host", host,
                     "--database-url", database_url(server_url, f"{prefix}audit"),
                     *(["--udp-port", str(audit_port)] if args.audit_transport == "udp" else [])]
    node_pki = getattr(args, "pki", None)
    if node_pki is None:
        audit_command += ["--tcp-port", str(audit_port)]
    else:
        audit = node_pki.nodes["audit"]
        audit_command += ["--tls-port", str(audit_port), "--tls-cert", str(audit.cert), "--tls-key", str(audit.key),
                          "--tls-client-ca", str(audit.ca)]
    found = [Service("audit record repository", audit_command, f"{prefix}audit",
                     (Listener("syslog-TLS" if node_pki is not None else "syslog", audit_port),))]
    found.append(Service("registry", [
        py, "-m", "registry.cli", "--host", host, "--port", str(args.registry_port + o), "--mllp-host", host,
        "--mllp-port", str(args.mllp_port + o), "--database-url", database_url(server_url, f"{prefix}registry"),
        "--affinity-domain-oid", NHS_NUMBER_OID, *xua_args(args, creds, "registry"),
        *audit_args(args, creds, "registry"), *tls_args(args, "registry"), *policy], f"{prefix}registry",
        (Listener("HTTP", args.registry_port + o), Listener("MLLP", args.mllp_port + o))))
    for h in HOSPITALS:
        db = prefix + h.name.replace("-", "_")
        found.append(Service(f"{h.name} repository", [
            py, "-m", "repository.cli", "--host", host, "--port", str(h.repository_port + o),
            "--repository-unique-id", h.repository_unique_id, "--registry-url", registry_url,
            "--storage-dir", str(args.data_dir / h.name / "documents"),
            "--database-url", database_url(server_url, f"{db}_repository"), *xua_args(args, creds, "repository"),
            *audit_args(args, creds, f"{h.name}-repository"), *tls_args(args, f"{h.name}-repository"), *decisions],
            f"{db}_repository",
            (Listener("HTTP", h.repository_port + o),)))
        found.append(Service(f"{h.name} imaging source", [
            py, "-m", "imaging_source.cli", "serve", "--host", host, "--port", str(h.imaging_port + o),
            "--dicom-host", host, "--dicom-port", str(h.dicom_port + o), "--ae-title", h.ae_title,
            "--storage-dir", str(args.data_dir / h.name / "images"),
            "--database-url", database_url(server_url, f"{db}_imaging"),
            "--repository-unique-id", h.repository_unique_id,
            "--repository-url", f"{scheme(args)}://{host}:{h.repository_port + o}/repository",
            "--registry-url", registry_url,
            "--patient-id-issuer-oid", h.hospital_number_oid, "--patient-id-issuer-namespace", h.namespace,
            "--affinity-domain-oid", NHS_NUMBER_OID, "--pix-host", host, "--pix-port", str(args.mllp_port + o),
            *(["--quiet-period", str(args.quiet_period)] if args.quiet_period is not None else []),
            *xua_args(args, creds, "imaging"), *audit_args(args, creds, f"{h.name}-imaging"),
            *tls_args(args, f"{h.name}-imaging"), *decisions], f"{db}_imaging",
            (Listener("HTTP", h.imaging_port + o), Listener("DICOM", h.dicom_port + o, h.ae_title))))
    oidc_port = args.oidc_port + o
    found.append(Service("OpenID Connect provider", [], None, (
        Listener("HTTP", oidc_port, path=oidc_provider.DISCOVERY_PATH, plain=True),)))
    return found


def with_oidc(network: list[Service], provider: oidc_provider.OidcProvider, host: str) -> list[Service]:
    """The network with the provider's command and environment filled in (known once it is prepared)."""
    return [Service(s.name, provider.command(host, s.listeners[0].port), None, s.listeners, provider.env())
            if s.name == "OpenID Connect provider" else s for s in network]


@dataclass(frozen=True, slots=True)
class PortalWiring:
    """Everything the portal needs from the region, in one place."""

    url: str  # where the portal listens, e.g. https://127.0.0.1:8090/
    host: str
    port: int
    registry_url: str  # ITI-18
    registry_mllp: tuple[str, int]  # ITI-9 PIX and ITI-21 PDQ
    repositories: dict[str, str]  # repositoryUniqueId -> ITI-43 URL
    imaging_sources: dict[str, str]  # hospital name -> imaging source web root (WADO-RS under /dicomweb)
    oidc_issuer: str
    oidc_client_file: Path  # JSON with issuer, client_id, client_secret, redirect_uri
    database: str  # the name of its database on the region's PostgreSQL server
    database_url: str  # and its URL
    data_dir: Path
    tls: list[str]  # its --tls-* options (empty with --insecure)
    access_policy_url: str | None = None  # the registry's /policy endpoints when the access policy is on
    credentials: security.RegionCredentials | None = None  # its XUA signing key
    audit_args: tuple[str, ...] = ()  # where it sends its audit records
    audit_database_url: str | None = None  # what its admin page's audit search reads


def portal_wiring(args: argparse.Namespace, server_url: str, provider: oidc_provider.OidcProvider,
                  creds: security.RegionCredentials | None = None) -> PortalWiring:
    host, o = args.host, args.port_offset
    return PortalWiring(
        url=portal_url(args), host=host, port=args.portal_port + o,
        registry_url=f"{scheme(args)}://{host}:{args.registry_port + o}/registry",
        registry_mllp=(host, args.mllp_port + o),
        repositories={h.repository_unique_id: f"{scheme(args)}://{host}:{h.repository_port + o}/repository"
                      for h in HOSPITALS},
        imaging_sources={h.name: f"{scheme(args)}://{host}:{h.imaging_port + o}" for h in HOSPITALS},
        tls=tls_args(args, "portal"),
        oidc_issuer=provider.issuer, oidc_client_file=provider.client_file,
        database=f"{args.database_prefix}portal",
        database_url=database_url(server_url, f"{args.database_prefix}portal"), data_dir=args.data_dir / "portal",
        credentials=creds, audit_args=tuple(audit_args(args, creds, "portal")),
        audit_database_url=database_url(server_url, f"{args.database_prefix}audit") if creds else None,
        access_policy_url=(f"{scheme(args)}://{host}:{args.registry_port + o}/policy" if args.access_policy == "on"
                           else None))


def portal_service(wiring: PortalWiring) -> Service:
    """The clinicians' portal (`xds-portal`) over the region's registry and hospitals, signing in at the
    embedded OpenID Connect provider (role and organisation come as its "groups" claim)."""
    client = json.loads(wiring.oidc_client_file.read_text(encoding="utf-8"))
    hospitals = ";".join(f"{h.name}|{h.repository_unique_id}|{wiring.repositories[h.repository_unique_id]}|"
                         f"{h.hospital_number_oid}" for h in HOSPITALS)
    return Service("portal", [
        sys.executable, "-m", "consumer.portal.cli", "--host", wiring.host, "--port", str(wiring.port),
        "--public-url", wiring.url.rstrip("/"), "--database-url", wiring.database_url,
        "--registries", f"region|{wiring.registry_url}", "--hospitals", hospitals,
        "--affinity-domain-oid", NHS_NUMBER_OID,
        "--registry-mllp", f"{wiring.registry_mllp[0]}:{wiring.registry_mllp[1]}",
        "--oidc-issuer", wiring.oidc_issuer, "--oidc-client-id", client["client_id"],
        # one argument with '=': a generated secret may start with '-', which argparse takes for an option
        f"--oidc-client-secret={client['client_secret']}", "--oidc-redirect-url", client["redirect_uri"],
        "--oidc-role-claim", "groups", "--oidc-organisation-claim", "groups:org-",
        "--imaging-sources", ";".join(f"{name}|{root}" for name, root in wiring.imaging_sources.items()),
        "--admin-role", "clinician",  # the demo user may open the registry browser and the audit search
        *xua_signing_args(wiring), *wiring.audit_args,
        *(["--audit-database-url", wiring.audit_database_url] if wiring.audit_database_url else []),
        *wiring.tls,
        *(["--access-policy-url", wiring.access_policy_url] if wiring.access_policy_url else []),
    ], wiring.database, (Listener("HTTP", wiring.port, path="/health"),))


def xua_signing_args(wiring: PortalWiring) -> list[str]:
    """The portal signs its users' assertions with the region's portal key; organisations are the hospitals
    (the demo provider's ``org-<hospital>`` groups), each with its hospital-number OID's arc as its id."""
    creds = wiring.credentials
    if creds is None:
        return []
    organisations = ";".join(f"{h.name}={h.hospital_number_oid.rsplit('.', 1)[0]}" for h in HOSPITALS)
    return ["--xua-signing-key", str(creds.xua_key), "--xua-signing-cert", str(creds.xua_cert),
            "--xua-issuer", creds.xua_issuer, "--xua-audience", f"urn:oid:{NHS_NUMBER_OID}",
            "--xua-organisation-ids", organisations]


def portal_url(args: argparse.Namespace) -> str:
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1"}.get(args.host, args.host)
    return f"{scheme(args)}://{host}:{args.portal_port + args.port_offset}/"


def endpoints(args: argparse.Namespace) -> str:
    host, o = args.host, args.port_offset
    mllp, dicom = ("mllp", "DICOM") if args.insecure else ("mllps", "DICOM/TLS")  # MLLP and DICOM over TLS
    lines = [f"registry            ITI-42/ITI-18  {scheme(args)}://{host}:{args.registry_port + o}/registry  "
             "(WSDL: ?wsdl)",
             f"                    ITI-8/ITI-9    {mllp}://{host}:{args.mllp_port + o}  "
             f"(affinity domain {NHS_NUMBER_OID})"]
    for h in HOSPITALS:
        web = f"{scheme(args)}://{host}:{h.imaging_port + o}"
        lines += [
            f"{h.name:<19} repository     {scheme(args)}://{host}:{h.repository_port + o}/repository  "
            f"(repositoryUniqueId {h.repository_unique_id})",
            f"{'':<19} imaging        {dicom} {h.ae_title}@{host}:{h.dicom_port + o}  RAD-69 {web}/rad69  "
            f"WADO-RS {web}/dicomweb  status {web}/status",
            f"{'':<19} hospital numbers: {h.namespace} (assigning authority {h.hospital_number_oid})",
        ]
    lines.append(f"{'OpenID Connect':<19} issuer         http://{host}:{args.oidc_port + o}  "
                 f"(portal client: {args.data_dir / 'oidc' / 'portal-client.json'})")
    lines.append(f"{'audit repository':<19} ITI-20         {audit_url(args)}  (xds-audit; search: portal /admin/audit "
                 f"or xds-audit search --database-url ...)")
    lines.append(f"{'XUA':<19} {args.xua:<14} on ITI-18, ITI-43, RAD-69, DICOMweb/WADO (portal key and trust files: "
                 f"{args.data_dir / 'security'})")
    return "\n".join(lines)


def busy_port_message(host: str, network: list[Service], port_offset: int) -> str | None:
    """One line naming the first port already taken (another xds-local?), or None when all are free."""
    for service in network:
        for listener in service.listeners:
            if port_in_use(host, listener.port):
                return (f"xds-local: port {listener.port} ({service.name} {listener.kind}) on {host} is already in "
                        f"use, probably by another xds-local; stop that one or give this one other ports with "
                        f"--port-offset (now {port_offset}, e.g. --port-offset {port_offset + 100})")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xds-local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("XDS_DATABASE_URL"),
                        help="PostgreSQL server URL (a user that may create databases); when absent an embedded "
                             "PostgreSQL is started [env XDS_DATABASE_URL]")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="folder for all local data")
    parser.add_argument("--host", default="127.0.0.1", help="address the services listen on")
    parser.add_argument("--registry-port", type=int, default=8010)
    parser.add_argument("--mllp-port", type=int, default=2575)
    parser.add_argument("--port-offset", type=int, default=0, help="added to every port (to run two networks)")
    parser.add_argument("--database-prefix", default="xds_", help="prefix of the per-service database names")
    parser.add_argument("--oidc-port", type=int, default=8070, help="port of the embedded OpenID Connect provider")
    parser.add_argument("--portal-port", type=int, default=8090)
    parser.add_argument("--audit-port", type=int, default=6514,
                        help="port of the audit record repository (xds-audit): syslog over TLS, or UDP")
    parser.add_argument("--audit-transport", choices=("tls", "udp"), default="tls",
                        help="how the services send audit records: tls (RFC 5425, acknowledged: nothing lost) or udp "
                             "(RFC 5426)")
    parser.add_argument("--xua", choices=("required", "optional", "off"), default="required",
                        help="XUA on the services' user-facing transactions (ITI-18, ITI-43, RAD-69, DICOMweb/WADO): "
                             "the portal sends an assertion for its user; node-to-node ITI-41/42/57 stay allowed "
                             "without one (local_network/security.py EXEMPT_ACTIONS)")
    parser.add_argument("--quiet-period", type=float, default=None,
                        help="seconds without a new instance before an imaging source publishes a study's manifest "
                             "(the imaging sources' default when absent)")
    parser.add_argument("--no-demo-data", action="store_true", help="do not load the demo patients and studies")
    parser.add_argument("--access-policy", choices=("on", "off"), default="on",
                        help="the regional access policy (DATA-DIR/policy/access-policy.toml, written at the first "
                             "start): relationships from the hospitals' ADT feeds, opt-outs, break-glass")
    parser.add_argument("--insecure", action="store_true",
                        help="plain HTTP, MLLP and DICOM between the services (no TLS, no certificates): for "
                             "experiments only; by default every service speaks mutual TLS with certificates from "
                             "a local CA kept in DATA_DIR/tls")
    parser.add_argument("--ready-timeout", type=float, default=180.0,
                        help="seconds every service has to become ready before everything is stopped")
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir.resolve()

    # Ports first: a second copy must not touch the first one's database or announce its services.
    busy = busy_port_message(args.host, services(args, "postgresql:///"), args.port_offset)
    if busy:
        print(busy, file=sys.stderr)
        return 2

    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    try:
        args.pki = None if args.insecure else region_pki(args)
    except (OSError, ValueError, tls.TlsSetupError) as exc:
        print(f"xds-local: cannot set up the region's certificates in {args.data_dir / 'tls'}: {exc}",
              file=sys.stderr)
        return 1
    if args.insecure:
        how = "over UDP" if audit_transport(args) == "udp" else "over plain TCP"
        print("xds-local: --insecure: every service speaks plain HTTP, MLLP and DICOM, without TLS or client "
              f"certificates, and sends its audit records {how} (unencrypted); for experiments only, never with "
              "real patient data", file=sys.stderr, flush=True)
    if args.access_policy == "on":
        note = anonymous_note(access_policy_file(args.data_dir, args.insecure), args.insecure)
        if note:
            print(note, file=sys.stderr, flush=True)
    try:
        provider = oidc_provider.prepare(args.data_dir, args.host, args.oidc_port + args.port_offset, portal_url(args))
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"xds-local: cannot set up the OpenID Connect provider: {exc}", file=sys.stderr)
        return 1
    try:
        creds = security.prepare(args.data_dir, audience=f"urn:oid:{NHS_NUMBER_OID}")
    except (OSError, ValueError) as exc:
        print(f"xds-local: cannot make the region's XUA and audit credentials: {exc}", file=sys.stderr)
        return 1
    server_url, embedded = resolve_database_url(args.database_url, args.data_dir)
    network = with_oidc(services(args, server_url, creds), provider, args.host)
    network.append(portal_service(portal_wiring(args, server_url, provider, creds)))
    try:
        asyncio.run(ensure_databases(server_url, [s.database for s in network if s.database]))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"xds-local: cannot create the service databases on {server_url}: {exc}", file=sys.stderr)
        return 1
    # Each child in its own process group: Ctrl-C reaches only us, and we stop them in order.
    started = [(s, subprocess.Popen(s.command, process_group=0, env=s.env)) for s in network]
    loader: list[subprocess.Popen] = []
    try:
        status = supervise(args, server_url, started, lambda: stop, Region(provider, loader))
    finally:
        for p in [*loader, *(p for _, p in started)]:
            if p.poll() is None:
                p.terminate()
        for _, p in started:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if embedded is not None:
            embedded.cleanup()  # stops the server unless another process still uses it
    print("xds-local: stopped", flush=True)
    return status


def region_pki(args: argparse.Namespace) -> pki.RegionPki:
    """The local CA and every node's certificate (made at the first start, then reused); xds-local's own
    becomes this process's TLS identity for the readiness probes."""
    region = pki.ensure_region_pki(args.data_dir, node_names(), (args.host,))
    if region.created:
        print(f"xds-local: made TLS certificates in {region.folder}: {', '.join(region.created)}", flush=True)
    tls.configure(SimpleNamespace(**region.nodes["xds-local"].as_dict()))
    return region


@dataclass(slots=True)
class Region:
    provider: oidc_provider.OidcProvider
    loader: list[subprocess.Popen]  # the demo data loader, once started


def demo_loader(args: argparse.Namespace) -> subprocess.Popen:
    """The demo data loader as a child (it resumes an interrupted load, and does nothing once loaded)."""
    host, o = args.host, args.port_offset
    spec = {"data_dir": str(args.data_dir),
            "registry_url": f"{scheme(args)}://{host}:{args.registry_port + o}/registry",
            "mllp": [host, args.mllp_port + o], "hospitals": [{
                "name": h.name, "namespace": h.namespace, "hospital_number_oid": h.hospital_number_oid,
                "repository_url": f"{scheme(args)}://{host}:{h.repository_port + o}/repository",
                "repository_unique_id": h.repository_unique_id, "dicom_host": host, "dicom_port": h.dicom_port + o,
                "ae_title": h.ae_title} for h in HOSPITALS],
            "tls": {} if args.pki is None else args.pki.nodes["xds-local"].as_dict()}
    return subprocess.Popen([sys.executable, "-m", "local_network.demo_data", json.dumps(spec)], process_group=0)


def ready_block(args: argparse.Namespace, server_url: str, region: Region) -> str:
    provider = region.provider
    lines = [f"\nxds-local: database server {server_url}", endpoints(args), "",
             f"portal              {portal_url(args)}  (sign in with the demo login)",
             f"demo login          {provider.demo_login} / {provider.demo_password}  (at {provider.issuer})"]
    if args.pki is not None:
        lines.append(f"TLS                 CA {args.pki.ca_file}; node certificates in {args.pki.folder}; for a "
                     f"browser import {args.pki.browser_p12} (password {args.pki.browser_password})")
    from local_network.demo_data import demo_patients

    for patient in demo_patients(args.data_dir):
        numbers = ", ".join(f"{k} {v}" for k, v in patient["hospital_numbers"].items())
        lines.append(f"demo patient        NHS {patient['nhs_number']}  {patient['family']}^{patient['given']}  "
                     f"{numbers}")
    return "\n".join(lines) + "\n"


def supervise(args: argparse.Namespace, server_url: str, started: list[tuple[Service, subprocess.Popen]],
              stopping, region: Region) -> int:
    """Announce ready once every listener of every child answers and the demo data are in; then watch
    until asked to stop.

    Returns 0 when stopped on request, 1 when a service exited, did not become ready in time, or the
    demo data could not be loaded.
    """
    pending = [(s, p, listener) for s, p in started for listener in s.listeners]
    deadline = time.monotonic() + args.ready_timeout
    announced = False
    while not stopping():
        for s, p in started:
            if p.poll() is not None:
                when = "" if not pending else " before it was ready"
                print(f"xds-local: {s.name} exited with {p.returncode}{when}; stopping everything",
                      file=sys.stderr, flush=True)
                return 1
        if pending:
            pending = [(s, p, li) for s, p, li in pending if not ready(p.pid, args.host, li)]
            if not pending and not args.no_demo_data:
                region.loader.append(demo_loader(args))
            if pending and time.monotonic() > deadline:
                s, _, li = pending[0]
                print(f"xds-local: {s.name} {li.describe(args.host)} not ready after {args.ready_timeout:g} s; "
                      "stopping everything", file=sys.stderr, flush=True)
                return 1
        if not pending and not announced:
            loading = region.loader[0] if region.loader else None
            if loading is not None and loading.poll() is not None and loading.returncode != 0:
                print("xds-local: the demo data could not be loaded (see above); stopping everything",
                      file=sys.stderr, flush=True)
                return 1
            if loading is None or loading.returncode == 0:
                print(ready_block(args, server_url, region), flush=True)
                print("xds-local: ready (every HTTP, MLLP and DICOM listener answers); Ctrl-C stops everything.",
                      flush=True)
                announced = True
        time.sleep(0.3 if pending or not announced else 0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
