"""ATNA audit (ITI-20): DICOM PS3.15 A.5 audit messages, syslog transport, a durable spool.

``messages`` builds the AuditMessage XML from a small typed :class:`AuditEvent` (pure);
``events`` says, per IHE transaction, which event codes and participant objects it carries;
``syslog`` frames RFC 5424 messages (RFC 5425 octet counting, RFC 5426 UDP); ``spool`` keeps
every record on disk until the audit record repository has acknowledged it; ``sender`` resends
in order; ``middleware`` audits every request a service handles, in one place.
"""
