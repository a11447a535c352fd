"""The access policy file (TOML): the region's organisations, durations, restriction rules and networks.

Example (``docs/examples/access-policy.toml``)::

    anonymous = "deny"                      # requests with no identity
    relationship-days-after-discharge = 30
    referral-days = 90
    break-glass-minutes = 240
    break-glass-when-opted-out = false
    trusted-networks = ["10.0.0.0/8"]       # the portal asks for multi-factor sign-in from elsewhere
    mfa-acr = ["mfa", "urn:example:acr:2fa"]

    [[organisations]]
    id = "1.3.6.1.4.1.21367.2026.1"
    names = ["Hospital A"]
    repositories = ["1.3.6.1.4.1.21367.2026.1.1"]
    sources = ["1.3.6.1.4.1.21367.2026.1.3"]
    feeds = ["HOSPA"]

    [[restrictions]]
    name = "sexual health"
    class-codes = ["SH^^^2.16.840.1.113883.2.1.3.2.4.18.34"]
    confidentiality = ["R^^^2.16.840.1.113883.5.25"]
    organisations = ["1.3.6.1.4.1.21367.2026.1"]
    roles = []

    # BPPC consent documents (formatCode urn:ihe:iti:bppc:2007 or bppc-sd) naming one of these policies in their
    # eventCodeList opt the patient out (in) when registered
    opt-out-policies = ["OPT-OUT^^^1.3.6.1.4.1.21367.2026.0.2"]
    opt-in-policies = ["OPT-IN^^^1.3.6.1.4.1.21367.2026.0.2"]

    [[nodes]]                               # callers without XUA, named by their TLS client certificate
    certificate-cn = "hospital-a-repository"  # or certificate-sha256 = "<64 hex digits>"
    organisation = "1.3.6.1.4.1.21367.2026.1"
    role = "..."                            # optional: the role it acts in (restrictions' roles)
    policy-endpoints = ["decisions"]        # may ask /policy/decisions ("portal": /policy/patient, break-glass, grants)

    [[nodes]]                               # or by address (plain TCP, or no certificate entry matches)
    network = "10.1.0.0/16"
    organisation = "1.3.6.1.4.1.21367.2026.1"
"""

from __future__ import annotations

import ipaddress
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

from ihe.policy.model import Anonymous, Node, Organisation, PolicyConfig, Restriction


class PolicyConfigError(ValueError):
    """The policy file is wrong; the message names the key."""


def _strings(value: Any, key: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyConfigError(f"{key} must be a list of strings")
    return frozenset(v.strip() for v in value if v.strip())


def _oid(value: str) -> str:
    return value[len("urn:oid:"):] if value.lower().startswith("urn:oid:") else value


POLICY_ENDPOINTS = frozenset({"decisions", "portal"})


def _node(value: Any, i: int) -> Node:
    """One [[nodes]] entry: an organisation, and a certificate (CN or SHA-256) and/or a network naming the caller."""
    if not isinstance(value, dict):
        raise PolicyConfigError(f"nodes[{i}] must be a table")
    n = {str(k).replace("_", "-"): v for k, v in value.items()}
    unknown = set(n) - {"organisation", "network", "certificate-cn", "certificate-sha256", "role", "policy-endpoints"}
    if unknown:
        raise PolicyConfigError(f"nodes[{i}]: unknown keys {', '.join(sorted(unknown))}")
    org = n.get("organisation")
    if org is not None and not isinstance(org, str):
        raise PolicyConfigError(f"nodes[{i}].organisation must be a string (the organisation's OID)")
    text = {k: n[k].strip() if isinstance(n.get(k), str) and n[k].strip() else None
            for k in ("network", "certificate-cn", "certificate-sha256", "role")}
    if not (text["network"] or text["certificate-cn"] or text["certificate-sha256"]):
        raise PolicyConfigError(f"nodes[{i}] needs a certificate-cn, a certificate-sha256 or a network (CIDR)")
    sha = text["certificate-sha256"]
    if sha is not None:
        sha = sha.replace(":", "").lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise PolicyConfigError(f"nodes[{i}].certificate-sha256 is not a SHA-256 fingerprint (64 hex digits)")
    endpoints = _strings(n.get("policy-endpoints"), f"nodes[{i}].policy-endpoints")
    if bad := endpoints - POLICY_ENDPOINTS:
        raise PolicyConfigError(f"nodes[{i}].policy-endpoints: unknown {', '.join(sorted(bad))}"
                                f" (known: {', '.join(sorted(POLICY_ENDPOINTS))})")
    if not (org and org.strip()) and not endpoints:
        raise PolicyConfigError(f"nodes[{i}] needs an organisation (or policy-endpoints for a node that only asks "
                                "the registry's /policy endpoints)")
    try:
        network = ipaddress.ip_network(text["network"], strict=False) if text["network"] else None
    except ValueError as exc:
        raise PolicyConfigError(f"nodes[{i}].network: {exc}") from None
    return Node(_oid(org.strip()) if org and org.strip() else None, network, text["certificate-cn"], sha,
                text["role"], endpoints)


def parse_policy(data: dict[str, Any]) -> PolicyConfig:
    """A :class:`PolicyConfig` from the parsed TOML (keys with - or _)."""
    data = {str(k).replace("_", "-"): v for k, v in data.items()}
    known = {"anonymous", "relationship-days-after-discharge", "referral-days", "break-glass-minutes",
             "break-glass-when-opted-out", "break-glass-reasons", "trusted-networks", "mfa-acr", "organisations",
             "restrictions", "nodes", "consent-format-codes", "opt-out-policies", "opt-in-policies"}
    unknown = set(data) - known
    if unknown:
        raise PolicyConfigError(f"unknown keys in the access policy: {', '.join(sorted(unknown))}")
    orgs = []
    for i, o in enumerate(data.get("organisations", [])):
        if not isinstance(o, dict) or not isinstance(o.get("id"), str) or not o["id"].strip():
            raise PolicyConfigError(f"organisations[{i}] needs an id (its OID)")
        orgs.append(Organisation(id=_oid(o["id"].strip()), names=_strings(o.get("names"), f"organisations[{i}].names"),
                                 repositories=_strings(o.get("repositories"), f"organisations[{i}].repositories"),
                                 sources=_strings(o.get("sources"), f"organisations[{i}].sources"),
                                 feeds=_strings(o.get("feeds"), f"organisations[{i}].feeds")))
    ids = {o.id for o in orgs}
    rules = []
    for i, r in enumerate(data.get("restrictions", [])):
        r = {str(k).replace("_", "-"): v for k, v in r.items()}
        members = frozenset(_oid(x) for x in _strings(r.get("organisations"), f"restrictions[{i}].organisations"))
        if members - ids:
            raise PolicyConfigError(f"restrictions[{i}] names organisations not in [[organisations]]: "
                                    f"{', '.join(sorted(members - ids))}")
        rule = Restriction(name=str(r.get("name") or f"rule {i + 1}"),
                           confidentiality=_strings(r.get("confidentiality"), f"restrictions[{i}].confidentiality"),
                           class_codes=_strings(r.get("class-codes"), f"restrictions[{i}].class-codes"),
                           type_codes=_strings(r.get("type-codes"), f"restrictions[{i}].type-codes"),
                           organisations=members, roles=_strings(r.get("roles"), f"restrictions[{i}].roles"))
        if not (rule.confidentiality or rule.class_codes or rule.type_codes):
            raise PolicyConfigError(f"restrictions[{i}] matches no code (confidentiality, class-codes, type-codes)")
        rules.append(rule)
    nodes = [_node(n, i) for i, n in enumerate(data.get("nodes", []))]
    try:
        trusted = tuple(ipaddress.ip_network(x, strict=False) for x in _strings(data.get("trusted-networks"),
                                                                                  "trusted-networks"))
        anonymous = Anonymous(str(data.get("anonymous", "deny")))
        reasons = tuple((str(k), str(v)) for k, v in dict(data.get("break-glass-reasons") or {}).items())
    except ValueError as exc:
        raise PolicyConfigError(f"access policy: {exc}") from None
    extra: dict[str, Any] = {"break_glass_reasons": reasons} if reasons else {}
    if "consent-format-codes" in data:
        extra["consent_format_codes"] = _strings(data["consent-format-codes"], "consent-format-codes")
    return PolicyConfig(
        organisations=tuple(orgs),
        relationship_after_discharge=timedelta(days=float(data.get("relationship-days-after-discharge", 30))),
        referral_lifetime=timedelta(days=float(data.get("referral-days", 90))),
        break_glass_lifetime=timedelta(minutes=float(data.get("break-glass-minutes", 240))),
        break_glass_when_opted_out=bool(data.get("break-glass-when-opted-out", False)),
        anonymous=anonymous, restrictions=tuple(rules), nodes=tuple(nodes), trusted_networks=trusted,
        mfa_acr=_strings(data.get("mfa-acr"), "mfa-acr"),
        opt_out_policies=_strings(data.get("opt-out-policies"), "opt-out-policies"),
        opt_in_policies=_strings(data.get("opt-in-policies"), "opt-in-policies"), **extra)


def load_policy_file(path: Path | str) -> PolicyConfig:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PolicyConfigError(f"access policy {path}: {exc}") from None
    return parse_policy(data.get("policy", data))
