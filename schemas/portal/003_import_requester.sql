-- The import worker calls RAD-69 and ITI-43 on behalf of the user who queued the job: it needs that
-- user's identity (as the sign-in gave it) to make the XUA assertion, not only the display name.
ALTER TABLE portal_import
    ADD COLUMN requester_subject       text,
    ADD COLUMN requester_role          text,
    ADD COLUMN requester_organisation  text;
