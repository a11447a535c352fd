-- XDS.b Document Registry: patients known from the identity feed, and registry objects.
--
-- Each registry object keeps its canonical ebRIM XML (column ebrim) beside the columns the
-- stored queries filter on. The registry's read path returns ebRIM, so serving stored
-- fragments avoids re-serializing the model on every query; whenever an object's state
-- changes (status, folder lastUpdateTime) the store rewrites its fragment in the same
-- transaction, so the fragment is always the object's current wire form.
--
-- Coded values are stored as 'code^^^codingScheme' strings, the form stored query
-- parameters use, in arrays so that OR within a parameter is one && test.
-- Times are HL7 DTM normalised to the earliest instant they denote (UTC).

CREATE TABLE patient (
    id           bigserial PRIMARY KEY,
    merged_into  bigint REFERENCES patient (id),
    family_name  text,
    given_name   text,
    birth_date   text,          -- HL7 DTM as received (YYYY[MM[DD]])
    sex          text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Every identifier a patient is known by (hospital numbers, NHS number): the cross-references.
-- authority is the assigning authority's universal id (OID) when given, else its namespace id.
CREATE TABLE patient_identifier (
    id_value             text NOT NULL,
    authority            text NOT NULL,
    authority_namespace  text,
    authority_oid        text,
    patient              bigint NOT NULL REFERENCES patient (id),
    PRIMARY KEY (id_value, authority)
);
CREATE INDEX patient_identifier_patient ON patient_identifier (patient);

-- One row per uniqueId in the registry, whatever kind of object holds it: the primary key
-- makes "exactly one submission wins" hold under concurrency.
CREATE TABLE unique_id_claim (
    unique_id   text PRIMARY KEY,
    object_id   uuid NOT NULL,
    object_kind text NOT NULL,   -- DocumentEntry | SubmissionSet | Folder
    hash        text             -- DocumentEntry hash (lower case), for the resubmission rule
);

CREATE TABLE submission_set (
    id                 uuid PRIMARY KEY,
    lid                uuid NOT NULL,
    status             text NOT NULL,
    patient_id         text NOT NULL,
    unique_id          text NOT NULL,
    source_id          text,
    submission_time    timestamptz,
    author_person      text[] NOT NULL DEFAULT '{}',
    content_type_code  text[] NOT NULL DEFAULT '{}',
    home_community_id  text,
    ebrim              text NOT NULL,
    seq                bigserial
);
CREATE INDEX submission_set_patient ON submission_set (patient_id, status);

CREATE TABLE folder (
    id                 uuid PRIMARY KEY,
    lid                uuid NOT NULL,
    version            int NOT NULL DEFAULT 1,
    status             text NOT NULL,
    patient_id         text NOT NULL,
    unique_id          text NOT NULL,
    last_update_time   timestamptz,
    code               text[] NOT NULL DEFAULT '{}',
    home_community_id  text,
    ebrim              text NOT NULL,
    seq                bigserial
);
CREATE INDEX folder_patient ON folder (patient_id, status);
CREATE INDEX folder_lid ON folder (lid);

CREATE TABLE document_entry (
    id                             uuid PRIMARY KEY,
    lid                            uuid NOT NULL,
    version                        int NOT NULL DEFAULT 1,
    status                         text NOT NULL,
    object_type                    text NOT NULL,   -- stable or on-demand objectType UUID
    patient_id                     text NOT NULL,
    unique_id                      text NOT NULL,
    hash                           text,
    size                           bigint,
    repository_unique_id           text,
    class_code                     text[] NOT NULL DEFAULT '{}',
    type_code                      text[] NOT NULL DEFAULT '{}',
    format_code                    text[] NOT NULL DEFAULT '{}',
    practice_setting_code          text[] NOT NULL DEFAULT '{}',
    healthcare_facility_type_code  text[] NOT NULL DEFAULT '{}',
    confidentiality_code           text[] NOT NULL DEFAULT '{}',
    event_code                     text[] NOT NULL DEFAULT '{}',
    creation_time                  timestamptz,
    service_start_time             timestamptz,
    service_stop_time              timestamptz,
    author_person                  text[] NOT NULL DEFAULT '{}',
    reference_id                   text[] NOT NULL DEFAULT '{}',
    home_community_id              text,
    ebrim                          text NOT NULL,
    seq                            bigserial
);
CREATE INDEX document_entry_patient ON document_entry (patient_id, status);
CREATE INDEX document_entry_unique_id ON document_entry (unique_id);
CREATE INDEX document_entry_lid ON document_entry (lid);

CREATE TABLE association (
    id                 uuid PRIMARY KEY,
    type               text NOT NULL,
    source             uuid NOT NULL,
    target             uuid NOT NULL,
    status             text NOT NULL,
    home_community_id  text,
    ebrim              text NOT NULL,
    seq                bigserial
);
CREATE INDEX association_source ON association (source, type);
CREATE INDEX association_target ON association (target, type);
