-- Portal: server-side sessions, sign-ins in progress, and the imaging manifest cache.

-- A signed-in user. The cookie carries a random token; only its SHA-256 is stored, so a
-- leaked table does not give away live sessions.
CREATE TABLE portal_session (
    token_hash    bytea PRIMARY KEY,
    subject       text NOT NULL,            -- the provider's "sub"
    user_name     text NOT NULL,
    role          text,
    organisation  text,
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX portal_session_last_seen ON portal_session (last_seen_at);

-- An OpenID Connect authorization request sent to the provider and not yet answered.
CREATE TABLE portal_login (
    state          text PRIMARY KEY,
    nonce          text NOT NULL,
    code_verifier  text NOT NULL,
    return_to      text NOT NULL DEFAULT '/',
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- What the portal read from a KOS manifest (retrieved by ITI-43). A document's content never
-- changes under its uniqueId, so an entry stays valid; a replacement has a new uniqueId.
CREATE TABLE portal_manifest (
    repository_unique_id   text NOT NULL,
    document_unique_id     text NOT NULL,
    study_uid              text NOT NULL,
    series_count           integer NOT NULL,
    image_count            integer NOT NULL,
    modalities             text[] NOT NULL DEFAULT '{}',
    retrieve_url           text,               -- WADO-RS root of the imaging source holding the study
    retrieve_location_uid  text,
    retrieve_ae_title      text,
    fetched_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_unique_id, document_unique_id)
);
CREATE INDEX portal_manifest_study ON portal_manifest (study_uid, fetched_at DESC);
