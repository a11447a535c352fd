"""Registry schema migrations applied to a database that already holds data, as at an upgrade."""

from __future__ import annotations

import uuid

import asyncpg

from ihe.metadata import vocabulary as v
from schemas import migrate, migration_files
from tests.conftest import _with_database


async def test_claim_sizes_are_filled_in_for_documents_registered_before_the_upgrade(postgres_admin_url):
    name = f"xds_migrate_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(_with_database(postgres_admin_url, name))
        try:
            first, *later = migration_files("registry")
            assert first[0] == "001_registry.sql" and "002_unique_id_claim_size.sql" in [n for n, _ in later]
            await conn.execute(first[1])
            await conn.execute("CREATE TABLE schema_migration (component text NOT NULL, name text NOT NULL,"
                               " applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, name))")
            await conn.execute("INSERT INTO schema_migration (component, name) VALUES ('registry', $1)", first[0])
            doc, folder = uuid.uuid4(), uuid.uuid4()
            await conn.execute(
                "INSERT INTO document_entry (id, lid, status, object_type, patient_id, unique_id, hash, size, ebrim)"
                " VALUES ($1, $1, $2, $3, 'p^^^&1.2&ISO', '1.2.3', 'ab', 4711, '<x/>')",
                doc, v.STATUS_APPROVED, v.DOCUMENT_ENTRY_STABLE)
            await conn.execute("INSERT INTO unique_id_claim VALUES ('1.2.3', $1, 'DocumentEntry', 'ab'),"
                               " ('1.2.4', $2, 'Folder', NULL)", doc, folder)
            assert "002_unique_id_claim_size.sql" in await migrate(conn, "registry")
            sizes = dict(await conn.fetch("SELECT unique_id, size FROM unique_id_claim"))
            assert sizes == {"1.2.3": 4711, "1.2.4": None}
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
