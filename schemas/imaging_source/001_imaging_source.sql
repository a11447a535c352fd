-- XDS-I.b Imaging Document Source: index of received DICOM instances and of the KOS manifests
-- published for them. The instance files live in the storage folder; rows point at them by key.

CREATE TABLE imaging_study (
    study_uid            text PRIMARY KEY,
    patient_id           text NOT NULL,            -- DICOM Patient ID: the hospital number
    patient_issuer_oid   text,                     -- its assigning authority (Issuer of Patient ID or configured)
    patient_issuer_ns    text,
    affinity_patient_id  text,                     -- CX in the affinity domain, once PIX maps it
    accession_number     text,
    header               jsonb NOT NULL,           -- DICOM JSON of the patient and study attributes, as received
    -- receiving: instances arriving; waiting_patient: complete but not mapped to an affinity id;
    -- publishing: a manifest is being (re)sent; published: the latest manifest is registered.
    state                text NOT NULL DEFAULT 'receiving'
                         CHECK (state IN ('receiving', 'waiting_patient', 'publishing', 'published')),
    changed              boolean NOT NULL DEFAULT true,  -- instances received since the last manifest was built
    first_received_at    timestamptz NOT NULL DEFAULT now(),
    last_received_at     timestamptz NOT NULL DEFAULT now(),
    attempts             integer NOT NULL DEFAULT 0,     -- patient mapping attempts while waiting
    last_error           text,
    next_attempt_at      timestamptz
);
CREATE INDEX imaging_study_due ON imaging_study (last_received_at) WHERE changed;

CREATE TABLE imaging_series (
    series_uid           text PRIMARY KEY,
    study_uid            text NOT NULL REFERENCES imaging_study ON DELETE CASCADE,
    modality             text,
    body_part            text,
    anatomic_region      text,                     -- code^^^scheme^meaning of Anatomic Region Sequence
    series_number        integer,
    series_description   text
);
CREATE INDEX imaging_series_study ON imaging_series (study_uid);

CREATE TABLE imaging_instance (
    sop_instance_uid     text PRIMARY KEY,
    series_uid           text NOT NULL REFERENCES imaging_series ON DELETE CASCADE,
    study_uid            text NOT NULL REFERENCES imaging_study ON DELETE CASCADE,
    sop_class_uid        text NOT NULL,
    transfer_syntax_uid  text NOT NULL,
    storage_key          text NOT NULL,
    size                 bigint NOT NULL,
    instance_number      integer,
    number_of_frames     integer,
    received_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX imaging_instance_study ON imaging_instance (study_uid, series_uid);

CREATE TABLE imaging_manifest (
    document_unique_id   text PRIMARY KEY,         -- the KOS SOP Instance UID
    study_uid            text NOT NULL REFERENCES imaging_study ON DELETE CASCADE,
    entry_uuid           text NOT NULL UNIQUE,     -- urn:uuid of its DocumentEntry, assigned here
    storage_key          text NOT NULL,
    size                 bigint NOT NULL,
    hash                 text NOT NULL,            -- SHA-1 hex
    instance_count       integer NOT NULL,
    replaces_entry_uuid  text,                     -- the published manifest it replaces (RPLC)
    -- pending: to be sent (again); published: registered; superseded: replaced before it was published
    state                text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'published', 'superseded')),
    attempts             integer NOT NULL DEFAULT 0,
    last_error           text,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    created_at           timestamptz NOT NULL DEFAULT now(),
    published_at         timestamptz
);
CREATE INDEX imaging_manifest_pending ON imaging_manifest (next_attempt_at) WHERE state = 'pending';
CREATE INDEX imaging_manifest_study ON imaging_manifest (study_uid, created_at);
