"""compose.yaml is checked by parsing (no Docker engine runs here): every service must start a
console script this project installs, with only options that script accepts."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def help_text(entry_point: str) -> str:
    module, _, func = entry_point.partition(":")
    code = f"import sys; from {module} import {func} as m; sys.exit(m(['--help']))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{entry_point} --help failed: {out.stderr}"
    return out.stdout


def ours() -> dict[str, dict]:
    """The services running this project's image (the others: PostgreSQL, the OpenID Connect provider)."""
    return {name: s for name, s in compose()["services"].items() if s.get("image") == "xds-network:latest"}


def test_every_service_runs_an_installed_console_script_with_known_options():
    scripts = console_scripts()
    assert "registry" in ours()
    for name, service in ours().items():
        command = service["command"]
        assert command[0] in scripts, f"service {name} runs {command[0]}, which pyproject.toml does not install"
        text = help_text(scripts[command[0]])
        for arg in command[1:]:
            if arg.startswith("--"):
                assert arg.split("=")[0] in text, f"service {name}: {command[0]} has no option {arg}"
        for var in service.get("environment", {}):
            if var.startswith("XDS_"):
                assert var in text, f"service {name}: {command[0]} does not read {var}"


def test_database_services_are_healthchecked_before_use():
    services = compose()["services"]
    assert "healthcheck" in services["postgres"]
    for name, service in services.items():
        if name != "postgres":
            assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name


def test_no_secret_is_written_in_the_file():
    text = (ROOT / "compose.yaml").read_text()
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD" in text
    assert "password=" not in text.lower()


def test_every_database_a_service_names_is_created_by_the_postgres_init_scripts():
    services = compose()["services"]
    created = {"xds"}
    for script in (ROOT / "deploy" / "postgres").glob("*.sql"):
        created |= {line.split()[2] for line in script.read_text().splitlines() if line.startswith("CREATE DATABASE")}
    for name, service in services.items():
        for var, value in service.get("environment", {}).items():
            if var.endswith(("DATABASE_URL", "KC_DB_URL")):
                assert value.rsplit("/", 1)[1] in created, f"{name}: database of {var} is never created"


def test_the_region_has_a_portal_an_audit_record_repository_and_an_oidc_provider():
    services = compose()["services"]
    assert services["portal"]["command"] == ["xds-portal"]
    assert services["audit"]["command"] == ["xds-audit", "serve"]
    assert "keycloak" in services["oidc"]["image"]
    audit = services["audit"]["environment"]
    assert audit["XDS_AUDIT_TLS_PORT"] == "6514" and audit["XDS_AUDIT_TLS_CERT"].startswith("/etc/xds/tls/")
    portal = services["portal"]["environment"]
    assert portal["XDS_PORTAL_OIDC_ISSUER"].startswith("${OIDC_ISSUER")
    assert portal["XDS_PORTAL_AUDIT_DATABASE_URL"] == audit["XDS_AUDIT_DATABASE_URL"]  # the admin audit search
    assert portal["XDS_PORTAL_XUA_SIGNING_KEY"] and portal["XDS_PORTAL_XUA_SIGNING_CERT"]


def test_every_service_audits_to_the_audit_repository_over_tls_and_keeps_its_spool():
    for name, service in ours().items():
        if name == "audit":
            continue
        prefix = "XDS_" + service["command"][0].removeprefix("xds-").replace("-", "_").upper() + "_"
        env = service["environment"]
        assert env[prefix + "AUDIT_REPOSITORY"] == "tls://audit:6514", name
        assert env[prefix + "AUDIT_CA_FILE"] == env[prefix + "TLS_CA"], f"{name}: the audit link trusts the domain CA"
        spool = env[prefix + "AUDIT_SPOOL_DIR"]
        assert any(v.endswith(":" + spool) and not v.startswith("./") for v in service["volumes"]), \
            f"{name}: the audit spool must be on a volume (it holds records not yet delivered)"


def test_the_services_require_xua_with_their_own_trust_file():
    for name, service in ours().items():
        if service["command"][0] in ("xds-registry", "xds-repository", "xds-imaging-source"):
            prefix = "XDS_" + service["command"][0].removeprefix("xds-").replace("-", "_").upper() + "_"
            env = service["environment"]
            assert env[prefix + "XUA"] == "required", name
            assert env[prefix + "XUA_TRUST"].startswith("/etc/xds/security/xua-trust-"), name


def env_prefix(service: dict) -> str:
    return "XDS_" + service["command"][0].removeprefix("xds-").replace("-", "_").upper() + "_"


def mounts(service: dict) -> dict[str, str]:
    """Container path -> host path of the service's bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        host, _, rest = volume.partition(":")
        found[rest.split(":")[0]] = host
    return found


def test_every_service_speaks_mutual_tls_with_its_own_certificate_from_deploy_tls():
    """Every service has its --tls-* (the audit repository: its certificate and the client CA), each from a file
    bind-mounted from deploy/tls (issued by the affinity domain's CA, never made in the image), its own folder."""
    folders = set()
    for name, service in ours().items():
        env, prefix = service["environment"], env_prefix(service)
        ca_var = prefix + ("TLS_CLIENT_CA" if name == "audit" else "TLS_CA")
        files = {var: env.get(var) for var in (prefix + "TLS_CERT", prefix + "TLS_KEY", ca_var)}
        assert all(files.values()), f"{name}: missing {[v for v, f in files.items() if not f]}"
        bound = mounts(service)
        for var, path in files.items():
            host = next((h for c, h in bound.items() if path == c or path.startswith(c.rstrip("/") + "/")), None)
            assert host and host.startswith("./deploy/tls/"), f"{name}: {var}={path} is not mounted from deploy/tls"
            assert all(v.endswith(":ro") for v in service["volumes"] if v.startswith("./deploy/tls")), name
        folders.add(bound["/etc/xds/tls/node"])
    assert len(folders) == len(ours()), "every service has a certificate of its own"
    layout = (ROOT / "deploy" / "tls" / "README.md").read_text()
    for folder in folders:
        assert folder.removeprefix("./deploy/tls/") in layout, f"deploy/tls/README.md does not describe {folder}"
    image = (ROOT / "Dockerfile").read_text()
    assert "deploy" not in image and "openssl" not in image, "the image must hold and make no certificate"


def test_no_plain_http_url_remains_between_services():
    """Service-to-service URLs are https:// (SOAP, DICOMweb) or tls:// (audit); healthchecks too."""
    names = set(compose()["services"])
    for name, service in ours().items():
        text = yaml.safe_dump({"environment": service["environment"], "healthcheck": service.get("healthcheck")})
        assert "http://" not in text, f"{name} still has a plain http:// URL"
        peers = [(scheme, host) for scheme, host in re.findall(r"([a-z]+)://([A-Za-z0-9._-]+)", text) if host in names]
        assert all(scheme in ("https", "tls", "postgresql") for scheme, _ in peers), (name, peers)
    registry = ours()["registry"]["environment"]
    assert registry["XDS_REGISTRY_AUDIT_REPOSITORY"] == "tls://audit:6514"
