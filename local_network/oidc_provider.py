"""The region's embedded OpenID Connect provider: canaille, run as a child process.

canaille (a maintained Python identity server, on PyPI) keeps its configuration and SQLite
database under ``DATA_DIR/oidc``. The first start writes the configuration (a random secret
key and an RSA signing key, kept for later starts so issued tokens stay verifiable), creates
the database, a demo user and the portal's confidential client, and writes the client's
credentials to ``portal-client.json`` for the portal to read. Later starts reuse all of it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DEMO_LOGIN = "demo"
PORTAL_CLIENT_ID = "xds-portal"
PORTAL_CALLBACK_PATH = "/auth/callback"
DISCOVERY_PATH = "/.well-known/openid-configuration"
# canaille puts only registered claims in tokens, so the demo user's role and organisation are groups.
DEMO_GROUPS = ("clinician", "org-hospital-a")  # the portal reads organisation as groups:org-


@dataclass(frozen=True, slots=True)
class OidcProvider:
    issuer: str
    config_file: Path
    client_file: Path  # JSON: issuer, client_id, client_secret, redirect_uri
    demo_login: str
    demo_password: str

    def command(self, host: str, port: int) -> list[str]:
        return [*canaille_command(), "run", "--bind", f"{host}:{port}"]

    def env(self) -> dict[str, str]:
        return {**os.environ, "CANAILLE_CONFIG": str(self.config_file)}


def canaille_command() -> list[str]:
    """canaille's command line run by this interpreter (no console script or PATH needed)."""
    return [sys.executable, "-c", "import sys; from canaille.commands import cli; sys.argv[0] = 'canaille'; "
            "sys.exit(cli())"]


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def config_text(*, secret_key: str, server_name: str, database_file: Path, jwk: dict[str, str]) -> str:
    """canaille's TOML configuration for a local, plain-HTTP provider."""
    key = ", ".join(f"{name} = {_toml_string(str(value))}" for name, value in jwk.items())
    return "\n".join([
        f"SECRET_KEY = {_toml_string(secret_key)}",
        f"SERVER_NAME = {_toml_string(server_name)}",
        'PREFERRED_URL_SCHEME = "http"',
        "[CANAILLE]",
        'NAME = "XDS region sign-in"',
        "CAPTCHA_ENABLED = false",
        "ENABLE_PASSWORD_RECOVERY = false",
        "[CANAILLE_SQL]",
        f"DATABASE_URI = {_toml_string('sqlite:///' + str(database_file))}",
        "[CANAILLE_OIDC]",
        f"ACTIVE_JWKS = [{{{key}}}]",
        "",
    ])


def _canaille(args: list[str], config_file: Path | None) -> str:
    """Run one canaille management command; its standard output, or RuntimeError with its error."""
    env = {**os.environ, "CANAILLE_CONFIG": str(config_file)} if config_file else dict(os.environ)
    done = subprocess.run([*canaille_command(), *args], env=env,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        error = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"canaille {args[0]} {args[1] if len(args) > 1 else ''} failed: {error}")
    return done.stdout


def _write_atomically(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def prepare(data_dir: Path, host: str, port: int, portal_url: str) -> OidcProvider:
    """Configuration, database, demo user and portal client, made once under ``data_dir / "oidc"``.

    Each step leaves a file behind only when it has finished, so an interrupted first start
    redoes just the unfinished steps.
    """
    folder = data_dir / "oidc"
    folder.mkdir(parents=True, exist_ok=True)
    connect_host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1"}.get(host, host)
    issuer = f"http://{connect_host}:{port}"
    config_file = folder / "canaille.toml"
    state_file = folder / "state.json"  # secrets chosen once: they must survive restarts
    if state_file.exists():
        state = json.loads(state_file.read_text())
    else:
        jwk = json.loads(_canaille(["jwk", "create", "rsa"], None))
        state = {"secret_key": secrets.token_urlsafe(32), "jwk": jwk,
                 "demo_password": secrets.token_urlsafe(9), "client_secret": secrets.token_urlsafe(24)}
        _write_atomically(state_file, json.dumps(state))
    # The issuer follows the port (a --port-offset changes it), so the configuration is rewritten each start.
    _write_atomically(config_file, config_text(secret_key=state["secret_key"], server_name=f"{connect_host}:{port}",
                                               database_file=folder / "canaille.sqlite", jwk=state["jwk"]))
    redirect_uri = portal_url.rstrip("/") + PORTAL_CALLBACK_PATH
    provisioned = folder / "provisioned.json"
    done = json.loads(provisioned.read_text()) if provisioned.exists() else {}
    if done.get("redirect_uri") != redirect_uri:
        _canaille(["install"], config_file)
        if not done.get("user"):
            user = json.loads(_canaille([
                "create", "user", "--user-name", DEMO_LOGIN, "--password", state["demo_password"],
                "--given-name", "Demo", "--family-name", "Clinician", "--emails", "demo@example.org",
                "--organization", "Hospital A", "--title", "clinician"], config_file))
            done["user"] = user["id"]
            _write_atomically(provisioned, json.dumps(done))
        for group in DEMO_GROUPS:  # role and organisation reach the portal as the "groups" claim
            if group not in done.get("groups", []):
                _canaille(["create", "group", "--display-name", group, "--members", done["user"], "--quiet"],
                          config_file)
                done["groups"] = [*done.get("groups", []), group]
                _write_atomically(provisioned, json.dumps(done))
        if done.get("client"):  # a new --port-offset moved the portal: only its redirect URI changes
            _canaille(["set", "client", PORTAL_CLIENT_ID, "--redirect-uris", redirect_uri, "--quiet"], config_file)
        else:
            _canaille(["create", "client", "--client-id", PORTAL_CLIENT_ID, "--client-secret", state["client_secret"],
                       "--client-name", "XDS portal", "--redirect-uris", redirect_uri,
                       "--grant-types", "authorization_code", "--grant-types", "refresh_token",
                       "--response-types", "code", "--scope", "openid", "--scope", "profile", "--scope", "email",
                       "--scope", "groups", "--token-endpoint-auth-method", "client_secret_basic", "--quiet"],
                      config_file)
            # canaille leaves a new client's audience empty, so its ID tokens carry an empty "aud", which a
            # relying party must refuse (OIDC Core 3.1.3.7): the portal is the audience of its own tokens.
            _canaille(["set", "client", PORTAL_CLIENT_ID, "--audience", PORTAL_CLIENT_ID, "--quiet"], config_file)
        done.update(client=True, redirect_uri=redirect_uri)
        _write_atomically(provisioned, json.dumps(done))
    client_file = folder / "portal-client.json"
    _write_atomically(client_file, json.dumps({
        "issuer": issuer, "client_id": PORTAL_CLIENT_ID, "client_secret": state["client_secret"],
        "redirect_uri": redirect_uri, "scopes": ["openid", "profile", "email", "groups"],
        "role_and_organisation_claim": "groups"}, indent=2) + "\n")
    return OidcProvider(issuer, config_file, client_file, DEMO_LOGIN, state["demo_password"])
