-- XDS.b Document Repository: which documents each repository holds, and the journal of
-- submissions whose bytes are stored but whose registration (ITI-42) is not yet settled.
--
-- Several repositories (one per hospital) may share one database, so every row names its
-- repositoryUniqueId. Bytes live in the repository's storage folder, content-addressed by
-- SHA-256 (content_key); sha1 is the XDS hash sent to the registry.
--
-- Protocol of ITI-41: journal the submission (repository_submission + its documents), place
-- the blobs, register; then in one transaction move the documents into repository_document
-- and delete the journal row, or, if registration failed, remove unreferenced blobs and then
-- the journal row. A journal row left by a crash is settled at restart by asking the registry.

CREATE TABLE repository_document (
    repository_unique_id  text NOT NULL,
    document_unique_id    text NOT NULL,
    content_key           text NOT NULL,
    sha1                  text NOT NULL,
    size                  bigint NOT NULL,
    mime_type             text NOT NULL,
    stored_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_unique_id, document_unique_id)
);
CREATE INDEX repository_document_content ON repository_document (repository_unique_id, content_key);

CREATE TABLE repository_submission (
    id                    uuid PRIMARY KEY,
    repository_unique_id  text NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX repository_submission_repository ON repository_submission (repository_unique_id, created_at);

CREATE TABLE repository_submission_document (
    submission            uuid NOT NULL REFERENCES repository_submission (id) ON DELETE CASCADE,
    document_unique_id    text NOT NULL,
    content_key           text NOT NULL,
    sha1                  text NOT NULL,
    size                  bigint NOT NULL,
    mime_type             text NOT NULL,
    PRIMARY KEY (submission, document_unique_id)
);
CREATE INDEX repository_submission_document_content ON repository_submission_document (content_key);
