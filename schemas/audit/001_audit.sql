-- ATNA audit record repository: one row per audit record received (syslog RFC 5424 carrying a
-- DICOM PS3.15 A.5 AuditMessage). (origin, seq) identifies a record sent from a spool: resends
-- after a lost acknowledgement are dropped, so each record is stored exactly once.
CREATE TABLE audit_record (
    id              bigserial PRIMARY KEY,
    origin          text,            -- the sending spool (NULL for senders without one)
    seq             bigint,
    received_at     timestamptz NOT NULL DEFAULT now(),
    event_time      timestamptz,
    event_id        text,            -- EventID code, e.g. 110112
    event_type      text,            -- EventTypeCode, e.g. ITI-18
    event_action    text,
    outcome         text,
    source_id       text,            -- AuditSourceID: the node that audited
    syslog_host     text,
    sender_address  text,            -- where the syslog message came from
    user_id         text,            -- the requesting participant(s), joined by ' | '
    user_address    text,            -- the requestor's NetworkAccessPointID
    patient_ids     text[] NOT NULL DEFAULT '{}',
    object_ids      text[] NOT NULL DEFAULT '{}',
    parse_error     text,            -- set when the message could not be read: kept, never dropped
    message         bytea NOT NULL,  -- the AuditMessage as received
    CONSTRAINT audit_record_origin_seq UNIQUE (origin, seq)
);
CREATE INDEX audit_record_patient ON audit_record USING gin (patient_ids);
CREATE INDEX audit_record_user ON audit_record (user_id);
CREATE INDEX audit_record_source ON audit_record (source_id, event_time);
CREATE INDEX audit_record_time ON audit_record (event_time);
CREATE INDEX audit_record_event ON audit_record (event_type, event_time);
