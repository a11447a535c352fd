-- XDS Metadata Update option (ITI-57): versions of DocumentEntries and Folders.
--
-- lid (logicalID) and version already exist since 001 (every registered object is lid = id,
-- version 1). A new version is a new row with the same lid and version + 1; the previous one
-- stays (Deprecated) for $MetadataLevel 2 queries. "latest" marks the one row of each lid that
-- stored queries return by default, so the filter is a column test rather than a sub-query.
-- The unique indexes make two concurrent updates of one object unable to both succeed.

-- Existing rows need no change: 001 made lid and version NOT NULL and ITI-42 writes every
-- object as its own first version (lid = id, version 1), so every row is already the latest.

ALTER TABLE document_entry ADD COLUMN latest boolean NOT NULL DEFAULT true;
ALTER TABLE folder ADD COLUMN latest boolean NOT NULL DEFAULT true;

CREATE UNIQUE INDEX document_entry_lid_version ON document_entry (lid, version);
CREATE UNIQUE INDEX document_entry_lid_latest ON document_entry (lid) WHERE latest;
CREATE UNIQUE INDEX folder_lid_version ON folder (lid, version);
CREATE UNIQUE INDEX folder_lid_latest ON folder (lid) WHERE latest;
DROP INDEX IF EXISTS document_entry_lid;
DROP INDEX IF EXISTS folder_lid;
