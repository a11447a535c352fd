"""Enforcing the XUA policy at the HTTP edge, once per service, so no handler needs code of its own.

SOAP endpoints call :func:`enforce_soap` from their request reader (``ihe.http.SoapService`` does,
which covers the registry and RAD-69; the repository's streaming reader does too); DICOMweb and
WADO paths are covered by the middleware :func:`install` adds. Refusals become a WS-Security SOAP
Fault or HTTP 401/403, and every refusal is reported to the policy's failure hooks (the audit).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable

from aiohttp import web
from lxml import etree

from ihe.soap import FAULT_SENDER, SoapFault
from ihe.xml import XMLRejected, parse_xml
from ihe.xua.model import INVALID_SECURITY, SAML, XuaError, XuaFailure, XuaIdentity
from ihe.xua.policy import XuaMode, XuaPolicy
from ihe.xua.validate import has_security_token, validate_assertion

log = logging.getLogger(__name__)

XUA_POLICY = web.AppKey("xua_policy", XuaPolicy)
# Request key of the validated XuaIdentity (or None); RequestKey where aiohttp has it (3.12+).
XUA_IDENTITY = web.RequestKey("xua_identity", object) if hasattr(web, "RequestKey") else "xua_identity"
AUTH_SCHEME = "SAML"
# Hooks called with every refusal in this process, whatever the app (the ATNA audit's security alert);
# a policy's own ``on_failure`` hooks are called too.
FAILURE_HOOKS: list[Callable[[XuaFailure], None]] = []


def install(app: web.Application, policy: XuaPolicy | None, *, http_prefixes: tuple[str, ...] = ()) -> None:
    """Put ``policy`` on ``app`` (SOAP readers find it there) and guard the routes under ``http_prefixes``."""
    if policy is None:
        return
    app[XUA_POLICY] = policy
    if http_prefixes:
        app.middlewares.append(_middleware(policy, http_prefixes))
    log.info("XUA %s: audience %s, trusted issuers %s", policy.mode, policy.audience, ", ".join(policy.issuers))


def _claimed(root: etree._Element | None) -> tuple[str | None, str | None]:
    """Issuer and NameID as the refused assertion claims them, for the audit record only."""
    if root is None:
        return None, None
    assertion = next(root.iter(f"{{{SAML}}}Assertion"), None)
    if assertion is None:
        return None, None
    return (assertion.findtext(f"{{{SAML}}}Issuer"),
            assertion.findtext(f"{{{SAML}}}Subject/{{{SAML}}}NameID"))


def report(policy: XuaPolicy, error: XuaError, request: web.Request, root: etree._Element | None = None) -> None:
    issuer, subject = _claimed(root)
    failure = XuaFailure(reason=error.reason, code=error.code, endpoint=request.path, remote=request.remote,
                         issuer=issuer, subject=subject)
    log.warning("XUA refused %s from %s: %s", request.path, request.remote, error.reason)
    for hook in (*FAILURE_HOOKS, *policy.on_failure):
        try:
            hook(failure)
        except Exception:  # the audit must not turn a refusal into a 500
            log.exception("XUA failure hook failed")


def enforce_soap(request: web.Request, envelope: etree._Element, action: str | None = None) -> XuaIdentity | None:
    """The caller's identity per the app's policy, or a SOAP Fault (wsse subcode) when refused."""
    policy = request.config_dict.get(XUA_POLICY)
    if policy is None or policy.mode is XuaMode.OFF:
        return None
    optional = policy.mode is XuaMode.OPTIONAL or action in policy.exempt_actions
    if optional and not has_security_token(envelope):
        return None
    try:
        identity = validate_assertion(envelope, policy)
    except XuaError as exc:
        report(policy, exc, request, envelope)
        raise SoapFault(FAULT_SENDER, f"XUA: {exc.reason}", exc.code) from None
    request[XUA_IDENTITY] = identity
    return identity


def identity_of(request: web.Request) -> XuaIdentity | None:
    """The validated XUA identity of ``request`` (SOAP, DICOMweb or WADO), or None when none was sent or
    the service runs with ``--xua off``. Handlers and later layers (audit, access policy) read it here."""
    return request.get(XUA_IDENTITY)


def _assertion_from_header(value: str, policy: XuaPolicy) -> etree._Element:
    scheme, _, token = value.strip().partition(" ")
    if scheme.upper() != AUTH_SCHEME or not token.strip():
        raise XuaError(INVALID_SECURITY, f"the Authorization header must be '{AUTH_SCHEME} <base64url assertion>'")
    token = token.strip()
    if len(token) > policy.max_assertion_bytes * 4 // 3 + 4:
        raise XuaError(INVALID_SECURITY, f"the assertion exceeds the limit of {policy.max_assertion_bytes} bytes")
    try:
        data = base64.urlsafe_b64decode(token.replace("+", "-").replace("/", "_") + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise XuaError(INVALID_SECURITY, "the Authorization header's assertion is not base64") from None
    try:
        return parse_xml(data, max_bytes=policy.max_assertion_bytes)
    except XMLRejected as exc:
        raise XuaError(INVALID_SECURITY, f"the assertion is not acceptable XML: {exc.reason}") from None


def enforce_http(request: web.Request, policy: XuaPolicy) -> XuaIdentity | None:
    """The identity of a DICOMweb / WADO request, or HTTP 401 (not authenticated) / 403 (not for here)."""
    header = request.headers.get("Authorization")
    root = None
    try:
        if header is None:
            if policy.mode is XuaMode.OPTIONAL:
                return None
            raise XuaError(INVALID_SECURITY, f"this endpoint requires an XUA assertion: 'Authorization: "
                           f"{AUTH_SCHEME} <base64url SAML 2.0 assertion>'")
        root = _assertion_from_header(header, policy)
        return validate_assertion(root, policy)
    except XuaError as exc:
        report(policy, exc, request, root)
        status = web.HTTPForbidden if exc.http_status == 403 else web.HTTPUnauthorized
        headers = {"WWW-Authenticate": f'{AUTH_SCHEME} realm="{policy.audience}"'} \
            if status is web.HTTPUnauthorized else None
        raise status(text=f"XUA: {exc.reason}\n", headers=headers) from None


def _middleware(policy: XuaPolicy, prefixes: tuple[str, ...]):
    @web.middleware
    async def xua(request: web.Request, handler):
        # Decide by the route that matched, not by the raw path, so no spelling of a URL slips past.
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else ""
        if any(canonical == p or canonical.startswith(p.rstrip("/") + "/") for p in prefixes):
            request[XUA_IDENTITY] = enforce_http(request, policy)
        return await handler(request)

    return xua
