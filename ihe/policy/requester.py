"""Who is asking: the one place a service turns an HTTP request into the policy's :class:`Requester`.

The XUA identity (ihe.xua.web puts the validated assertion on the request, or on the parsed SOAP
request) wins; without one the requester is the calling node, whose organisation the policy's
``[[nodes]]`` may name (mutual TLS will name it by certificate); otherwise nobody, which the policy's
``anonymous`` setting decides. When the trust work changes how identities arrive, only this changes.
"""

from __future__ import annotations

from aiohttp import web

from ihe import tls
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


def from_xua(identity: XuaIdentity, node: str | None = None, peer: tls.PeerCertificate | None = None) -> Requester:
    return Requester(certificate=peer.common_name if peer else None, certificate_sha256=peer.sha256 if peer else None,
                     organisation=identity.organization_id or identity.organization or None,
                     user=identity.name_id or identity.subject_id or None,
                     role=identity.role.code if identity.role is not None else None,
                     purpose=identity.purpose_of_use.code if identity.purpose_of_use is not None else None,
                     source="xua", node=node, organisation_name=identity.organization or None)


def requester_of_soap(soap: SoapRequest) -> Requester:
    """The requester of a parsed SOAP request (its XUA identity, else its node)."""
    identity = soap.identity
    peer = soap.peer if isinstance(soap.peer, tls.PeerCertificate) else None
    if isinstance(identity, XuaIdentity):
        return from_xua(identity, soap.remote, peer)
    return node_requester(soap.remote, peer)


def node_requester(address: str | None, peer: tls.PeerCertificate | None) -> Requester:
    """A caller without XUA: its address and, over mutual TLS, its certificate, for the policy's [[nodes]]."""
    return Requester(source="anonymous", node=address, certificate=peer.common_name if peer else None,
                     certificate_sha256=peer.sha256 if peer else None)


def requester_of(request: web.Request) -> Requester:
    """The requester of ``request``: its XUA identity, else its node (address), for the policy to resolve."""
    identity = _identity(request)
    peer = tls.peer_certificate(request.transport)
    if identity is not None:
        return from_xua(identity, request.remote, peer)
    return node_requester(request.remote, peer)
