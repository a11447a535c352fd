-- Portal: studies imported into a hospital's PACS (issue 11, "Import"). One row per study
-- manifest and importing hospital; the job runs in the portal's background and its state is
-- kept here, so a restart resumes a job that was running (C-STORE of the same instances again
-- is harmless) and a failed one keeps its reason until Retry.
CREATE TABLE portal_import (
    id                    bigserial PRIMARY KEY,
    hospital              text NOT NULL,          -- the importing hospital (the user's organisation)
    patient_id            text NOT NULL,          -- affinity-domain id (NHS number)
    repository_unique_id  text NOT NULL,          -- where the study's manifest is
    document_unique_id    text NOT NULL,          -- the manifest's uniqueId
    study_uid             text,
    state                 text NOT NULL DEFAULT 'queued'
                          CHECK (state IN ('queued', 'running', 'imported', 'failed')),
    done_count            integer NOT NULL DEFAULT 0,
    total_count           integer,
    local_patient_id      text,                   -- the hospital's own number, once found by PIX
    reason                text,                   -- why it failed
    attempts              integer NOT NULL DEFAULT 0,
    requested_by          text NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (hospital, repository_unique_id, document_unique_id)
);
CREATE INDEX portal_import_waiting ON portal_import (created_at) WHERE state IN ('queued', 'running');
CREATE INDEX portal_import_patient ON portal_import (patient_id, hospital);
