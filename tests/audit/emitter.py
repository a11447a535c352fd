"""A stand-in service for the spool durability test: emits numbered audit records, as a real process.

    python -m tests.audit.emitter SPOOL_DIR tls://HOST:PORT CA_FILE RUN FIRST LAST

Prints ``appended I`` once record I is durably spooled, then ``drained`` when all are delivered.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ihe.audit.auditor import Auditor, client_ssl_context
from ihe.audit.messages import (
    ACTION_READ,
    EV_EXPORT,
    ID_REPORT_NUMBER,
    OUTCOME_SUCCESS,
    ROLE_REPORT,
    TYPE_SYSTEM,
    AuditEvent,
    Participant,
    ParticipantObject,
    patient,
)
from ihe.audit.sender import Destination, Sender
from ihe.audit.spool import Spool


def main() -> int:
    spool_dir, url, ca, run, first, last = sys.argv[1:7]
    spool = Spool.open_slot(Path(spool_dir), max_bytes=64 << 20)
    sender = Sender(spool, Destination.parse(url), ssl_context=client_ssl_context(ca))
    auditor = Auditor(spool, sender, source_id="emitter", app_name="emitter")
    auditor.start()
    for i in range(int(first), int(last) + 1):
        auditor.record(AuditEvent(EV_EXPORT, ACTION_READ, OUTCOME_SUCCESS, "emitter",
                                  (Participant("tester", True),),
                                  (patient(run), ParticipantObject(f"rec-{i}", ID_REPORT_NUMBER, TYPE_SYSTEM,
                                                                   ROLE_REPORT))))
        print(f"appended {i}", flush=True)
    print("drained" if sender.drain(120) else "not drained", flush=True)
    auditor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
