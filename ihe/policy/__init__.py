"""The regional access policy (issue 13): one pure decision function and what feeds it.

- :mod:`ihe.policy.model`: the plain data (Requester, DocumentFacts, PatientFacts, PolicyConfig, Decision);
- :mod:`ihe.policy.decide`: :func:`decide`, the rules of the sharing agreement;
- :mod:`ihe.policy.config`: the policy file (TOML);
- :mod:`ihe.policy.requester`: ``requester_of(request)``, the one place identities are read;
- :mod:`ihe.policy.client`: how retrieval points ask the registry (registry.policy_endpoint).
The data (relationships, opt-outs, break-glass) is in the registry's PostgreSQL (registry.access_policy).
"""

from ihe.policy.decide import decide
from ihe.policy.model import Decision, DocumentFacts, PatientFacts, PolicyConfig, Requester

__all__ = ["Decision", "DocumentFacts", "PatientFacts", "PolicyConfig", "Requester", "decide"]
