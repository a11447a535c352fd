"""Fixtures of the portal tests: a real ``xds-portal`` process and sign-in at a real OpenID Connect
provider (pytest-iam runs canaille in a thread of the test process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import requests

from tests.conftest import ROOT, RunningService, wait_for_port
from tests.imaging_source.conftest import new_imaging_database  # noqa: F401 - a fixture the region needs
from tests.messages import valid_nhs_number  # noqa: F401  (used by the portal tests)

CLIENT_ID = "xds-portal-test"
CLIENT_SECRET = "portal-test-secret"


def start_portal_process(database_url: str, port: int, log_path: Path, *extra: str) -> RunningService:
    """Start ``xds-portal`` as a real process on ``port``; its output goes to ``log_path``."""
    log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumer.portal.cli", "--port", str(port), "--database-url", database_url,
         "--log-level", "INFO", *extra],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        wait_for_port(port, proc)
    except Exception as exc:
        proc.kill()
        raise RuntimeError(f"{exc}\nportal log:\n{log_path.read_text(errors='replace')[-4000:]}") from None
    return RunningService(proc, url=f"http://127.0.0.1:{port}", port=port, log_path=log_path)


def register_client(iam_server, redirect_uri: str, client_id: str = CLIENT_ID):
    """The portal as a confidential client of the provider (each portal of a test session its own client id: the
    provider is shared by the whole session)."""
    with iam_server.app.app_context():
        client = iam_server.models.Client(
            client_id=client_id, client_secret=CLIENT_SECRET, client_name="XDS portal (tests)",
            client_uri=redirect_uri.rsplit("/auth/", 1)[0], redirect_uris=[redirect_uri],
            grant_types=["authorization_code"], response_types=["code"],
            token_endpoint_auth_method="client_secret_basic", scope=["openid", "profile", "email", "groups"])
        iam_server.backend.save(client)
        client.audience = [client]  # ID tokens name the portal as their audience
        iam_server.backend.save(client)
    return client


def new_user(iam_server, name: str, groups: list[str]):
    """A user of the provider, member of ``groups`` (role and organisation travel as groups here)."""
    with iam_server.app.app_context():
        user = iam_server.random_user(formatted_name=name)
        for group_name in groups:
            group = iam_server.models.Group(display_name=group_name, members=[user])
            iam_server.backend.save(group)
        iam_server.backend.reload(user)
    return user


def provider_round_trip(iam_server, client, user, portal_url: str,
                        next_path: str | None = None) -> tuple[requests.Session, requests.Response]:
    """The browser's round trip: portal -> provider (signed in, consented) -> portal callback; the browser and
    the portal's answer to the callback."""
    browser = requests.Session()
    start = browser.get(f"{portal_url}/login", params={"next": next_path} if next_path else None,
                        allow_redirects=False, timeout=30)
    assert start.status_code == 302, start.text
    authorize = start.headers["Location"]
    assert authorize.startswith(iam_server.url.rstrip("/")), authorize
    iam_server.login(user)
    with iam_server.app.app_context():
        iam_server.consent(user, client)
    try:
        answer = requests.get(authorize, allow_redirects=False, timeout=30)
    finally:
        iam_server.logout()
    assert answer.status_code == 302, answer.text[:2000]
    callback = answer.headers["Location"]
    assert urlsplit(callback).path == "/auth/callback", callback
    return browser, browser.get(callback, allow_redirects=False, timeout=30)


def sign_in(iam_server, client, user, portal_url: str, next_path: str | None = None) -> requests.Session:
    """A browser signed in to the portal."""
    browser, done = provider_round_trip(iam_server, client, user, portal_url, next_path)
    assert done.status_code == 302, done.text
    assert "xds_portal_session" in browser.cookies
    browser.landing = done.headers["Location"]  # type: ignore[attr-defined]
    browser.set_cookie_header = done.headers.get("Set-Cookie", "")  # type: ignore[attr-defined]
    return browser
