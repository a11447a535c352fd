-- Portal: the patient a session has open (the last patient list shown in it) and that list's studies
-- (from their manifests). A DICOMweb study search without StudyInstanceUID (OHIF looking for the
-- patient's other studies) covers these studies, and only these.
CREATE TABLE portal_session_patient (
    token_hash  bytea PRIMARY KEY REFERENCES portal_session (token_hash) ON DELETE CASCADE,
    patient_id  text NOT NULL,               -- affinity-domain id (NHS number)
    study_uids  text[] NOT NULL DEFAULT '{}',
    opened_at   timestamptz NOT NULL DEFAULT now()
);
