"""Storage SCPs that keep nothing: what the DICOM stack alone allows in one Python process.

    python -m bench.imaging.null_scp PORT [--stack pynetdicom|ul]

``pynetdicom``: pynetdicom's own threaded acceptor, with the contexts and settings the imaging source
had with it (max PDU 1 MiB, 120 s timeouts); its C-STORE handler takes the encoded dataset and answers
success. ``ul``: the imaging source's upper layer (ihe.dicom_ul, same contexts), its sink dropping each
fragment as it arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import threading

from pynetdicom import AE, evt

from imaging_source.storage_scp import supported_contexts


def pynetdicom_scp(port: int) -> None:
    def handle_store(event: evt.Event) -> int:
        event.encoded_dataset(include_meta=True)
        return 0x0000

    ae = AE(ae_title="NULL_SCP")
    ae.maximum_pdu_size = 1 << 20
    for cx in supported_contexts():
        ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax)
    ae.dimse_timeout = ae.network_timeout = 120
    ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    threading.Event().wait()


class _Drop:
    def write(self, fragment: bytes) -> None:
        pass

    async def finish(self) -> tuple[int, str | None]:
        return 0x0000, None

    def discard(self) -> None:
        pass


class _KeepNothing:
    def store(self, assoc, command, context) -> _Drop:
        return _Drop()

    def ended(self, assoc, released: bool) -> None:
        pass


async def ul_scp(port: int) -> None:
    from ihe.dicom_ul import Acceptor, AcceptorConfig

    await Acceptor(AcceptorConfig("NULL_SCP", supported_contexts()), _KeepNothing()).start("127.0.0.1", port)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("--stack", choices=("pynetdicom", "ul"), default="pynetdicom")
    args = parser.parse_args()
    if args.stack == "pynetdicom":
        pynetdicom_scp(args.port)
    else:
        from ihe.eventloop import run

        run(ul_scp(args.port))


if __name__ == "__main__":
    main()
