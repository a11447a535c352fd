"""A pynetdicom Storage SCP that keeps nothing: the ceiling of the DICOM stack in one Python process.

    python -m bench.imaging.null_scp PORT

Built like the imaging source's (same AE settings, ``storage_scp.build_ae``); its C-STORE handler takes
the encoded dataset, as ours does, and answers success without writing it anywhere.
"""

from __future__ import annotations

import sys
import threading

from pynetdicom import evt

from imaging_source.storage_scp import StorageSCPConfig, build_ae


def main(port: int) -> None:
    def handle_store(event: evt.Event) -> int:
        event.encoded_dataset(include_meta=True)
        return 0x0000

    ae = build_ae(StorageSCPConfig("NULL_SCP", "127.0.0.1", port))
    ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    threading.Event().wait()


if __name__ == "__main__":
    main(int(sys.argv[1]))
