"""How a retrieval point (repository, imaging source) asks the registry's access policy.

One small interface, :class:`PolicyClient`, so the transport (today ``POST /policy/decisions`` at the
registry, see registry.policy_endpoint) can change without touching a handler. It fails closed: when
the registry cannot be asked, everything is denied with a reason saying so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import aiohttp

from ihe.policy.model import Decision, Requester

log = logging.getLogger(__name__)

CACHED = Decision(True, "permitted (a recent decision of the registry's access policy)", "cached")


class PermitCache:
    """Recent permits of the registry's access policy, each for ``seconds``: a viewer asks for every frame of a
    study, and each would otherwise be a round trip to the registry; a change (opt-out, expiry) takes effect within
    ``seconds``. Denials are never kept, so access granted by break-glass or a new relationship shows at once.
    Shared by every asker (retrieval points, the portal) so that all of them revoke alike."""

    def __init__(self, seconds: float = 10.0, limit: int = 10_000) -> None:
        self.seconds = seconds
        self.limit = limit
        self._until: dict[tuple, float] = {}

    def permitted(self, key: tuple, now: float | None = None) -> bool:
        return self._until.get(key, 0.0) > (time.monotonic() if now is None else now)

    def remember(self, keys: Iterable[tuple], now: float | None = None) -> None:
        if self.seconds <= 0:
            return
        now = time.monotonic() if now is None else now
        if len(self._until) > self.limit:
            self._until = {k: t for k, t in self._until.items() if t > now}
        until = now + self.seconds
        self._until.update(dict.fromkeys(keys, until))


class PolicyClient:
    """Decisions for one retrieval point (``repository``: its repositoryUniqueId) from ``url``."""

    def __init__(self, url: str, repository: str, *, timeout: float = 10.0, cache_seconds: float = 10.0) -> None:
        self.url = url
        self.repository = repository
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self.permits = PermitCache(cache_seconds)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _ask(self, requester: Requester, documents: list[str], studies: list[str]) -> dict:
        if self._session is None:
            from ihe import tls  # the node's mutual TLS identity, when it has one (the registry requires it then)

            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout),
                                                  connector=tls.connector())
        payload = {"requester": requester.as_json(), "repository": self.repository, "documents": documents,
                   "studies": studies}
        async with self._session.post(self.url, json=payload) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
            return await response.json()

    async def decide(self, requester: Requester, *, documents: Iterable[str] = (),
                     studies: Iterable[str] = ()) -> tuple[dict[str, Decision], dict[str, Decision]]:
        """(decisions by document uniqueId, decisions by study UID); every one a denial if the registry fails."""
        documents = list(dict.fromkeys(documents))
        studies = list(dict.fromkeys(studies))
        now = time.monotonic()
        who = tuple(sorted(requester.as_json().items()))
        cached_docs = {d: CACHED for d in documents if self.permits.permitted((who, "d", d), now)}
        cached_studies = {s: CACHED for s in studies if self.permits.permitted((who, "s", s), now)}
        documents = [d for d in documents if d not in cached_docs]
        studies = [s for s in studies if s not in cached_studies]
        if not documents and not studies:
            return cached_docs, cached_studies
        try:
            answer = await self._ask(requester, documents, studies)
            docs, found = self._read(answer.get("documents"), documents), self._read(answer.get("studies"), studies)
            self.permits.remember([(who, "d", d) for d, v in docs.items() if v.permit]
                                  + [(who, "s", s) for s, v in found.items() if v.permit], now)
            return {**cached_docs, **docs}, {**cached_studies, **found}
        except (TimeoutError, aiohttp.ClientError, RuntimeError, ValueError) as exc:
            log.error("access policy at %s could not be asked: %s", self.url, exc)
            refusal = Decision(False, f"the access policy could not be consulted ({exc}); nothing is served",
                               "unavailable")
            return {d: refusal for d in documents}, {s: refusal for s in studies}

    @staticmethod
    def _read(answer: object, asked: list[str]) -> dict[str, Decision]:
        got = answer if isinstance(answer, dict) else {}
        result = {}
        for uid in asked:
            d = got.get(uid)
            if isinstance(d, dict) and isinstance(d.get("permit"), bool):
                result[uid] = Decision(d["permit"], str(d.get("reason") or ""), str(d.get("basis") or ""))
            else:
                result[uid] = Decision(False, "the access policy gave no decision", "unavailable")
        return result
