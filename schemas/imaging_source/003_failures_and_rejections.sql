-- A manifest the repository or registry refused for the submission itself (metadata, patient id) is not
-- retried: its study needs an operator (needs_action) until new instances, a new PIX mapping or an
-- explicit `xds-imaging-source retry` lets it be built again.
ALTER TABLE imaging_study ADD COLUMN needs_action boolean NOT NULL DEFAULT false;
-- withdrawn: every instance was rejected (IOCM); the published manifest is deprecated (ITI-57).
ALTER TABLE imaging_study DROP CONSTRAINT imaging_study_state_check;
ALTER TABLE imaging_study ADD CONSTRAINT imaging_study_state_check
    CHECK (state IN ('receiving', 'waiting_patient', 'publishing', 'published', 'failed', 'withdrawn'));
-- failed: refused for good; deprecating: to be set Deprecated by ITI-57 (retried); deprecated: done.
ALTER TABLE imaging_manifest DROP CONSTRAINT imaging_manifest_state_check;
ALTER TABLE imaging_manifest ADD CONSTRAINT imaging_manifest_state_check
    CHECK (state IN ('pending', 'published', 'superseded', 'failed', 'deprecating', 'deprecated'));
CREATE INDEX imaging_manifest_deprecating ON imaging_manifest (next_attempt_at) WHERE state = 'deprecating';
CREATE INDEX imaging_study_needs_action ON imaging_study (next_attempt_at) WHERE needs_action;

-- IOCM: instances rejected by a rejection note (KOS with a rejection title). They are taken out of the index
-- (so RAD-69 and WADO no longer serve them, and manifests no longer list them) and stay refused if sent again.
CREATE TABLE imaging_rejected_instance (
    sop_instance_uid     text PRIMARY KEY,
    study_uid            text NOT NULL,
    reason_code          text NOT NULL,            -- 113001, 113037, 113038, 113039 (DCM)
    reason               text NOT NULL,
    note_uid             text NOT NULL,            -- SOP Instance UID of the rejection note
    rejected_at          timestamptz NOT NULL DEFAULT now()
);
-- Every Key Object Selection instance received is looked at once (by its stored copy) for a rejection title.
CREATE TABLE imaging_kos_examined (
    sop_instance_uid     text PRIMARY KEY,
    storage_key          text NOT NULL,
    rejection_code       text,                     -- the rejection title's code value, NULL for an ordinary KOS
    examined_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX imaging_instance_kos ON imaging_instance (sop_instance_uid)
    WHERE sop_class_uid = '1.2.840.10008.5.1.4.1.1.88.59';

-- Corrections: an instance sent again with changed patient/study/series attributes (found by its received_at
-- being later than its study's last change) updates the study and publishes a new manifest; a manifest
-- remembers the affinity-domain patient it was published under: a study the hospital moved to another patient
-- has its manifest deprecated (ITI-57, for that patient) and is published anew for the new one (RPLC cannot
-- change the patient).
CREATE INDEX imaging_instance_received ON imaging_instance (received_at);
ALTER TABLE imaging_manifest ADD COLUMN patient_cx text;
-- replaced: published, then replaced (RPLC) by a newer manifest, so at most one manifest per study is 'published'.
ALTER TABLE imaging_manifest DROP CONSTRAINT imaging_manifest_state_check;
ALTER TABLE imaging_manifest ADD CONSTRAINT imaging_manifest_state_check
    CHECK (state IN ('pending', 'published', 'superseded', 'failed', 'deprecating', 'deprecated', 'replaced'));
UPDATE imaging_manifest m SET state = 'replaced' WHERE state = 'published'
    AND EXISTS (SELECT 1 FROM imaging_manifest n WHERE n.replaces_entry_uuid = m.entry_uuid AND n.state = 'published');
