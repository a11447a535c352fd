"""Manifests read several per ITI-43 request (consumer/portal/manifests.fetch_many) from a real repository
holding a real imaging source's manifest: each found one read, each missing one its own error."""

from __future__ import annotations

import asyncio

import pytest

from consumer.client.query import find_documents
from consumer.client.soap import SoapClient
from consumer.portal import manifests
from tests.portal.test_portal_http import NHS_OID, _cx, region  # noqa: F401  (the module's region fixture)


@pytest.fixture(scope="module")
def manifest_uid(region) -> str:  # noqa: F811
    async def find() -> str:
        async with SoapClient(timeout=30) as client:
            entries = await find_documents(client, region.registry.url, _cx(region.nhs, NHS_OID))
        [kos] = [e for e in entries if e.mime_type == "application/dicom"]
        return kos.unique_id

    return asyncio.run(find())


def test_several_manifests_in_one_request_each_read_or_refused(region, manifest_uid):  # noqa: F811
    repo = region.repo_a
    missing = "1.2.826.0.1.3680043.10.404.1"

    async def run():
        async with SoapClient(timeout=30) as client:
            return await manifests.fetch_many(client, repo.url, repo.repository_unique_id,
                                              [manifest_uid, missing, manifest_uid + ".9"])

    found = asyncio.run(run())
    assert set(found) == {manifest_uid, missing, manifest_uid + ".9"}
    info = found[manifest_uid]
    assert isinstance(info, manifests.ManifestInfo), info
    assert (info.study_uid, info.series_count, info.image_count) == (region.study_uid, 1, 1)
    assert manifests.dicomweb_root(info.retrieve_url) == f"{region.source.url}/dicomweb"
    for uid in (missing, manifest_uid + ".9"):
        assert isinstance(found[uid], manifests.ManifestError)
        assert "did not return the manifest" in str(found[uid])


def test_one_manifest_alone_is_read_the_same(region, manifest_uid):  # noqa: F811
    async def run():
        async with SoapClient(timeout=30) as client:
            one = await manifests.fetch(client, region.repo_a.url, region.repo_a.repository_unique_id, manifest_uid)
            with pytest.raises(manifests.ManifestError):
                await manifests.fetch(client, region.repo_a.url, region.repo_a.repository_unique_id, "1.2.3.404")
            return one

    assert asyncio.run(run()).study_uid == region.study_uid
