"""The access policy at the imaging source: RAD-69, WADO-URI, WADO-RS and QIDO-RS ask the registry's decision
endpoint (ihe.policy.client) by Study Instance UID before anything is served.

The imaging source knows a study's patient only by its hospital number, and none of the manifest's codes;
the registry knows both (the study UID is in the manifest's referenceIdList), so it decides. A study
the registry does not know (not yet published) is served only to this imaging source's own organisation.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from ihe.policy.client import PolicyClient
from ihe.policy.model import Decision
from ihe.policy.requester import requester_of
from imaging_source.context import ImagingSource

log = logging.getLogger(__name__)

POLICY = "policy"  # key in ImagingSource.extras


def policy_of(source: ImagingSource) -> PolicyClient | None:
    return source.extras.get(POLICY)


def open_policy(source: ImagingSource) -> None:
    if source.settings.access_policy_url:
        source.extras[POLICY] = PolicyClient(source.settings.access_policy_url, source.settings.repository_unique_id,
                                             cache_seconds=source.settings.access_policy_cache)


async def study_decisions(source: ImagingSource, request: web.Request, studies: list[str]) -> dict[str, Decision]:
    """A decision per study for the requester of ``request`` (every study permitted without a policy)."""
    policy = policy_of(source)
    if policy is None:
        return {s: Decision(True, "no access policy configured", "off") for s in studies}
    _, decisions = await policy.decide(requester_of(request), studies=studies)
    return decisions


def permitted_studies(source: ImagingSource,
                      request: web.Request) -> Callable[[Iterable[str]], Awaitable[set[str]]] | None:
    """For QIDO-RS: which of some studies the requester of ``request`` may see; None without a policy."""
    if policy_of(source) is None:
        return None

    async def permitted(studies: Iterable[str]) -> set[str]:
        decisions = await study_decisions(source, request, sorted(set(studies)))
        return {s for s, d in decisions.items() if d.permit}

    return permitted


def guard(source: ImagingSource, prefixes: tuple[str, ...]):
    """Middleware: a WADO-URI or DICOMweb request naming a study (path or studyUID) is answered 403 with the reason
    when the policy denies it. Searches without a study are filtered by QIDO-RS itself (:func:`filter_results`)."""

    @web.middleware
    async def access(request: web.Request, handler):
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else ""
        if policy_of(source) is not None and any(canonical == p or canonical.startswith(p.rstrip("/") + "/")
                                                 for p in prefixes):
            study = request.match_info.get("study") or request.query.get("studyUID")
            if study:
                decision = (await study_decisions(source, request, [study]))[study]
                if not decision.permit:
                    log.info("access policy: study %s refused to %s: %s", study, request.remote, decision.reason)
                    raise web.HTTPForbidden(text=f"access policy: {decision.said_to_requester()}\n")
        return await handler(request)

    return access


STUDY_TAG = "0020000D"


async def filter_results(source: ImagingSource, request: web.Request, results: list[dict]) -> list[dict]:
    """QIDO-RS results of studies the requester may see; a result without its study UID is withheld."""
    if policy_of(source) is None or not results:
        return results

    def study_of(item: dict) -> str | None:
        value = (item.get(STUDY_TAG) or {}).get("Value") or []
        return value[0] if value and isinstance(value[0], str) else None

    decisions = await study_decisions(source, request, [s for s in map(study_of, results) if s])
    return [r for r in results if (s := study_of(r)) is not None and decisions[s].permit]
