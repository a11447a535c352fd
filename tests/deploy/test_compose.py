"""compose.yaml is checked by parsing (no Docker engine runs here): every service must start a
console script this project installs, with only options that script accepts."""

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
    assert audit["XDS_AUDIT_TLS_PORT"] == "6514" and audit["XDS_AUDIT_TLS_CERT"].startswith("/etc/xds/security/")
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
        assert env[prefix + "AUDIT_CA_FILE"].startswith("/etc/xds/security/"), name
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
