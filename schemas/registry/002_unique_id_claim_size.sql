-- ITI-42 resubmission of a DocumentEntry uniqueId: the registry accepts it only with the same hash
-- (else XDSNonIdenticalHash) and the same size (else XDSNonIdenticalSize), so the claim keeps the
-- registered document's size beside its hash. Claims made before this column existed take the size
-- of the DocumentEntry that holds them.
ALTER TABLE unique_id_claim ADD COLUMN size bigint;
UPDATE unique_id_claim c SET size = d.size
    FROM document_entry d
    WHERE c.object_kind = 'DocumentEntry' AND d.id = c.object_id;
