-- ITI-86 Remove Documents: blobs whose last document row may have gone.
--
-- Removing a document deletes its repository_document row and records its content_key here in
-- the same transaction; after the commit the blob is deleted (unless another document or a
-- journaled submission still uses it, as blobs are shared by content) and the row goes. A
-- crash in between leaves the row, and the recovery round finishes the job: a leftover file is
-- cleaned up later, a row never points at a missing file.

CREATE TABLE repository_blob_release (
    repository_unique_id  text NOT NULL,
    content_key           text NOT NULL,
    released_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_unique_id, content_key)
);
