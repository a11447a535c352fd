-- Access policy (the regional sharing agreement): care relationships, opt-outs, break-glass grants,
-- and the log of every change to them. Rows name the registry's patient row; the reader also looks
-- at patients merged into it (A40), so nothing recorded under a merged id is lost.

CREATE TABLE care_relationship (
    patient        bigint NOT NULL REFERENCES patient (id),
    organisation   text NOT NULL,          -- the organisation's id (OID) in the policy file
    origin         text NOT NULL,          -- 'ADT A01', 'ADT A04', 'referral', ...
    started_at     timestamptz NOT NULL DEFAULT now(),
    discharged_at  timestamptz,            -- ADT A03: the relationship ends the configured time later
    expires_at     timestamptz,            -- an explicit end (referral entries)
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (patient, organisation)
);

CREATE TABLE patient_consent (
    patient     bigint PRIMARY KEY REFERENCES patient (id),
    opted_out   boolean NOT NULL,
    origin      text NOT NULL,             -- 'admin' or 'consent document <uniqueId>'
    changed_by  text,
    reason      text,
    changed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE break_glass (
    id            bigserial PRIMARY KEY,
    patient       bigint NOT NULL REFERENCES patient (id),
    organisation  text NOT NULL,
    user_id       text NOT NULL,
    role          text,
    reason_code   text NOT NULL,
    reason_text   text NOT NULL,
    granted_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    reviewed_at   timestamptz,
    reviewed_by   text
);
CREATE INDEX break_glass_patient ON break_glass (patient, organisation);

CREATE TABLE policy_event (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    kind          text NOT NULL,           -- relationship, discharge, referral, opt-out, opt-in, break-glass
    patient       bigint REFERENCES patient (id),
    organisation  text,
    actor         text,
    detail        text NOT NULL
);
CREATE INDEX policy_event_patient ON policy_event (patient, at);

-- The decision endpoint finds a study's manifests by referenceIdList (one && test) and a patient's merged
-- records by merged_into, on every WADO / DICOMweb / RAD-69 request: both need an index.
CREATE INDEX document_entry_reference_id ON document_entry USING gin (reference_id);
CREATE INDEX patient_merged_into ON patient (merged_into) WHERE merged_into IS NOT NULL;
