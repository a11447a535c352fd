"""OpenID Connect sign-in (authorization code flow with PKCE) against any standard provider.

authlib builds the authorization request (RFC 6749 parameters, PKCE S256 of RFC 7636) and joserfc
(the authlib project's JOSE library) verifies the ID token: signature by the provider's JWKS,
issuer, audience, expiry and nonce. This module adds discovery, the token request over aiohttp,
the pending-login record in PostgreSQL and the mapping of claims to the portal's user, role and
organisation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from consumer.portal.settings import PortalSettings

log = logging.getLogger(__name__)

ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
LOGIN_LIFETIME = 600  # seconds a user has to come back from the provider
METADATA_TTL = 3600
BEARER_CACHE_SECONDS = 60
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)


class SignInError(Exception):
    """The sign-in cannot complete; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str
    user_name: str
    role: str | None
    organisation: str | None
    acr: str | None = None  # the authentication context class of the sign-in (ID token), for two-factor checks


def claim_value(claims: dict[str, Any], spec: str) -> str | None:
    """The value named by ``spec``: ``claim`` (a string, or the first of a list) or ``claim:prefix``
    (the first value starting with ``prefix``, without it: e.g. ``groups:org-`` reads an organisation
    from a group named ``org-NAME``, for providers that only emit groups)."""
    name, _, prefix = spec.partition(":")
    value = claims.get(name)
    values = value if isinstance(value, list) else [value] if value is not None else []
    for v in values:
        text = str(v) if not isinstance(v, dict) else json.dumps(v)
        if text.startswith(prefix):
            return text[len(prefix):] or None
    return None


def identity_from_claims(claims: dict[str, Any], settings: PortalSettings) -> Identity:
    subject = str(claims.get("sub") or "")
    if not subject:
        raise SignInError("the provider's answer names no user (no sub claim)")
    user_name = str(claims.get("name") or claims.get("preferred_username") or claims.get("email") or subject)
    acr = claims.get("acr")
    return Identity(subject, user_name, claim_value(claims, settings.oidc_role_claim),
                    claim_value(claims, settings.oidc_organisation_claim), str(acr) if acr else None)


class OidcClient:
    """The portal's side of the provider: one per process."""

    def __init__(self, settings: PortalSettings) -> None:
        if not (settings.oidc_issuer and settings.oidc_client_id):
            raise ValueError("--oidc-issuer and --oidc-client-id are required to sign users in")
        self.settings = settings
        self.issuer = settings.oidc_issuer.rstrip("/")
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._jwks: KeySet | None = None
        self._bearer_cache: dict[str, tuple[float, Identity | None]] = {}

    async def _get_json(self, url: str) -> dict[str, Any]:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http, http.get(url) as response:
            response.raise_for_status()
            return await response.json(content_type=None)

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None or time.monotonic() - self._metadata_at > METADATA_TTL:
            metadata = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
            if str(metadata.get("issuer", "")).rstrip("/") != self.issuer:
                raise SignInError(f"the provider calls itself {metadata.get('issuer')!r}, not {self.issuer!r}")
            self._metadata, self._metadata_at, self._jwks = metadata, time.monotonic(), None
        return self._metadata

    async def _keys(self, refresh: bool = False) -> KeySet:
        if self._jwks is None or refresh:
            metadata = await self.metadata()
            self._jwks = KeySet.import_key_set(await self._get_json(metadata["jwks_uri"]))
        return self._jwks

    async def start(self, conn: asyncpg.Connection, return_to: str,
                    acr_values: list[str] | None = None) -> tuple[str, str]:
        """Record a pending login; (the provider's authorization URL to redirect to, its state).
        ``acr_values``: ask the provider for these authentication contexts (multi-factor off the trusted networks)."""
        metadata = await self.metadata()
        state, nonce, verifier = generate_token(32), generate_token(32), generate_token(48)
        extra = {"acr_values": " ".join(acr_values)} if acr_values else {}
        url = prepare_grant_uri(metadata["authorization_endpoint"], self.settings.oidc_client_id, "code",
                                redirect_uri=self.settings.redirect_url, scope=self.settings.oidc_scope, state=state,
                                nonce=nonce, code_challenge=create_s256_code_challenge(verifier),
                                code_challenge_method="S256", **extra)
        await conn.execute("DELETE FROM portal_login WHERE created_at < now() - make_interval(secs => $1)",
                           float(LOGIN_LIFETIME))
        await conn.execute("INSERT INTO portal_login (state, nonce, code_verifier, return_to) VALUES ($1, $2, $3, $4)",
                           state, nonce, verifier, return_to)
        return url, state

    async def finish(self, conn: asyncpg.Connection, state: str, code: str,
                     iss: str | None = None) -> tuple[Identity, str]:
        """Exchange the code for tokens, check the ID token, read the user; (identity, return_to).

        ``iss`` is the authorization response's issuer (RFC 9207) when the provider sends one."""
        login = await conn.fetchrow(
            "DELETE FROM portal_login WHERE state = $1 AND created_at > now() - make_interval(secs => $2) "
            "RETURNING nonce, code_verifier, return_to", state, float(LOGIN_LIFETIME))
        if login is None:
            raise SignInError("this sign-in is unknown or took too long; please sign in again")
        metadata = await self.metadata()
        if iss is not None and iss.rstrip("/") != str(metadata["issuer"]).rstrip("/"):
            raise SignInError("the sign-in answer comes from another identity provider")
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.settings.redirect_url,
                "code_verifier": login["code_verifier"]}
        supported = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        auth = None
        if "client_secret_basic" in supported or "client_secret_post" not in supported:
            auth = aiohttp.BasicAuth(self.settings.oidc_client_id, self.settings.oidc_client_secret or "")
        else:
            form |= {"client_id": self.settings.oidc_client_id, "client_secret": self.settings.oidc_client_secret or ""}
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            async with http.post(metadata["token_endpoint"], data=form, auth=auth,
                                 headers={"Accept": "application/json"}) as response:
                token = await response.json(content_type=None)
                if response.status != 200 or "error" in token:
                    log.warning("token request refused: HTTP %s %s", response.status, token)
                    raise SignInError("the identity provider refused the sign-in")
            id_token = token.get("id_token")
            if not id_token:
                raise SignInError("the identity provider sent no ID token")
            claims = await self._check_id_token(id_token, login["nonce"])
            userinfo: dict[str, Any] = {}
            if metadata.get("userinfo_endpoint") and token.get("access_token"):
                async with http.get(metadata["userinfo_endpoint"],
                                    headers={"Authorization": f"Bearer {token['access_token']}"}) as response:
                    if response.status == 200:
                        userinfo = await response.json(content_type=None)
            if userinfo and userinfo.get("sub") != claims.get("sub"):
                raise SignInError("the provider's user information is about another user")
        return identity_from_claims({**userinfo, **claims}, self.settings), login["return_to"]

    async def _check_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        registry = JWTClaimsRegistry(
            leeway=60, iss={"essential": True, "value": (await self.metadata())["issuer"]},
            aud={"essential": True, "value": self.settings.oidc_client_id}, sub={"essential": True},
            exp={"essential": True}, nonce={"essential": True, "value": nonce})
        for refresh in (False, True):  # a key rotated since the JWKS was read: read it once more
            try:
                token = jwt.decode(id_token, await self._keys(refresh), algorithms=ID_TOKEN_ALGORITHMS)
            except (JoseError, ValueError) as exc:
                if refresh:
                    log.warning("ID token signature refused: %s", exc)
                    raise SignInError("the identity provider's ID token is not valid") from None
                continue
            try:
                registry.validate(token.claims)
            except JoseError as exc:
                log.warning("ID token claims refused: %s", exc)
                raise SignInError("the identity provider's ID token is not valid") from None
            azp = token.claims.get("azp")
            if azp is not None and azp != self.settings.oidc_client_id:
                raise SignInError("the identity provider's ID token is for another client")
            return dict(token.claims)
        raise SignInError("the identity provider's ID token is not valid")

    async def userinfo(self, access_token: str) -> Identity | None:
        """The user an access token belongs to, asked of the provider's userinfo endpoint; None when the
        provider does not accept the token. Answers are kept for ``BEARER_CACHE_SECONDS``."""
        now = time.monotonic()
        key = hashlib.sha256(access_token.encode("utf-8")).hexdigest()
        hit = self._bearer_cache.get(key)
        if hit is not None and now - hit[0] < BEARER_CACHE_SECONDS:
            return hit[1]
        metadata = await self.metadata()
        endpoint = metadata.get("userinfo_endpoint")
        if not endpoint:
            return None
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http, http.get(
                endpoint, headers={"Authorization": f"Bearer {access_token}"}) as response:
            claims = await response.json(content_type=None) if response.status == 200 else None
        identity = None
        if isinstance(claims, dict) and claims.get("sub"):
            identity = identity_from_claims(claims, self.settings)
        if len(self._bearer_cache) > 10000:
            self._bearer_cache.clear()
        self._bearer_cache[key] = (now, identity)
        return identity
