"""What every portal handler needs: settings, the database pool, HTTP/SOAP clients, the sign-in client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg

from consumer.client.soap import SoapClient
from consumer.portal.settings import PortalSettings

if TYPE_CHECKING:
    from consumer.portal.oidc import OidcClient
    from consumer.portal.xua import PortalXua
    from ihe.audit.auditor import Auditor


@dataclass(slots=True)
class Portal:
    settings: PortalSettings
    pool: asyncpg.Pool
    http: aiohttp.ClientSession  # plain HTTP (reachability probes, the DICOMweb proxy)
    soap: SoapClient  # ITI-18, ITI-43
    oidc: OidcClient | None = None
    xua: PortalXua | None = None  # signs the users' XUA assertions (--xua-signing-key)
    auditor: Auditor | None = None  # ATNA audit of sign-in/out and of the portal's own requests
    extras: dict[str, Any] = field(default_factory=dict)  # background tasks, for shutdown

    def xua_headers(self) -> dict[str, str]:
        """Headers carrying the current user's XUA assertion, for the DICOMweb requests the portal makes itself
        (the list's QIDO-RS checks); empty without a signing key (consumer.portal.xua) or a user."""
        return self.xua.current_headers() if self.xua is not None else {}

    async def locate(self, study_uid: str) -> str | None:
        """The DICOMweb root of the imaging source holding ``study_uid`` (for the DICOMweb proxy)."""
        from consumer.portal.manifests import locate

        return await locate(self.pool, study_uid)

    async def close(self) -> None:
        for task in self.extras.values():
            if hasattr(task, "cancel"):
                task.cancel()
        if "audit_pool" in self.extras:
            await self.extras["audit_pool"].close()
        await self.soap.close()
        await self.http.close()
        await self.pool.close()
        if self.auditor is not None:
            self.auditor.close()
