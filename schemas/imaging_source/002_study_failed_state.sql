-- A study whose manifest could not be built (e.g. a header highdicom refuses) is retried with back-off and
-- listed as 'failed' with its last error, rather than blocking the studies behind it.
ALTER TABLE imaging_study DROP CONSTRAINT imaging_study_state_check;
ALTER TABLE imaging_study ADD CONSTRAINT imaging_study_state_check
    CHECK (state IN ('receiving', 'waiting_patient', 'publishing', 'published', 'failed'));
