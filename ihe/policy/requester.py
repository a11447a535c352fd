"""Who is asking: the one place a service turns an HTTP request into the policy's :class:`Requester`.

The XUA identity (ihe.xua.web puts the validated assertion on the request, or on the parsed SOAP
request) wins; without one the requester is the calling node, whose organisation the policy's
``[[nodes]]`` may name (mutual TLS will name it by certificate); otherwise nobody, which the policy's
``anonymous`` setting decides. When the trust work changes how identities arrive, only this changes.
"""

from __future__ import annotations

from aiohttp import web

from ihe.policy.model import Requester
from ihe.soap import SoapRequest
from ihe.xua.model import XuaIdentity


def _identity(request: web.Request) -> XuaIdentity | None:
    from ihe.http import SOAP_REQUEST
    from ihe.xua.web import XUA_IDENTITY

    identity = request.get(XUA_IDENTITY)
    if identity is None:
        soap = request.get(SOAP_REQUEST)
        identity = getattr(soap, "identity", None)
    return identity if isinstance(identity, XuaIdentity) else None


def from_xua(identity: XuaIdentity, node: str | None = None) -> Requester:
    return Requester(organisation=identity.organization_id or identity.organization or None,
                     user=identity.name_id or identity.subject_id or None,
                     role=identity.role.code if identity.role is not None else None,
                     purpose=identity.purpose_of_use.code if identity.purpose_of_use is not None else None,
                     source="xua", node=node, organisation_name=identity.organization or None)


def requester_of_soap(soap: SoapRequest) -> Requester:
    """The requester of a parsed SOAP request (its XUA identity, else its node)."""
    identity = soap.identity
    if isinstance(identity, XuaIdentity):
        return from_xua(identity, soap.remote)
    return Requester(source="anonymous", node=soap.remote)


def requester_of(request: web.Request) -> Requester:
    """The requester of ``request``: its XUA identity, else its node (address), for the policy to resolve."""
    identity = _identity(request)
    if identity is not None:
        return from_xua(identity, request.remote)
    return Requester(source="anonymous", node=request.remote)
