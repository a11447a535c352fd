"""XUA (IHE ITI-40 Provide X-User Assertion): SAML 2.0 identity assertions, built and validated here.

``assertion`` builds and signs an assertion for a signed-in user (the portal's side);
``validate`` checks one against a :class:`~ihe.xua.policy.XuaPolicy` (every service's side);
``web`` enforces the policy on SOAP endpoints and on DICOMweb / WADO paths of an aiohttp app.
"""

from ihe.xua.model import Code, XuaError, XuaFailure, XuaIdentity, XuaSubject
from ihe.xua.policy import XuaMode, XuaPolicy, load_policy
from ihe.xua.validate import validate_assertion

__all__ = [
    "Code",
    "XuaError",
    "XuaFailure",
    "XuaIdentity",
    "XuaMode",
    "XuaPolicy",
    "XuaSubject",
    "load_policy",
    "validate_assertion",
]
