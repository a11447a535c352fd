"""The registry's MLLP listener: one TCP server for every HL7 v2 transaction (ITI-8, ITI-9).

Framing is python-hl7's asyncio MLLP protocol (as ``hl7.mllp.start_hl7_server`` builds it); we read raw blocks
(``readblock``) rather than ``readmessage`` so that a block that does not decode or parse is
still answered (AR with the reason) instead of ending the connection. Messages on one
connection are handled in order, which is what a feed's sender expects.

Nothing that arrives may stop the listener: a handler's failure becomes an AR with code 207
(internal error, the sender should retry later) and is logged here, never sent back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import hl7
from hl7.mllp import HL7StreamProtocol, HL7StreamReader, InvalidBlockError

from ihe import tls
from ihe.audit.middleware import MLLP_PEER
from ihe.hl7 import (
    APPLICATION_INTERNAL_ERROR,
    MAX_MESSAGE_BYTES,
    HL7Error,
    build_ack,
    decode,
    get,
    parse_message,
)

log = logging.getLogger(__name__)

# A handler answers one parsed message with the encoded answer, or None for "no answer".
Handler = Callable[[hl7.Message], Awaitable[str | None]]


async def answer(block: bytes, handler: Handler) -> str | None:
    """The answer to one MLLP block: the handler's, or an ACK saying why there is none."""
    text = decode(block)
    try:
        message = parse_message(text)
    except HL7Error as exc:
        log.warning("HL7 v2 message rejected: %s", exc.reason)
        return build_ack(None, exc.ack_code, exc)
    try:
        return await handler(message)
    except Exception:
        log.exception("HL7 v2 message %s could not be handled", get(message, "MSH.F10"))
        error = HL7Error("AR", "the registry could not process the message now; send it again later",
                         APPLICATION_INTERNAL_ERROR)
        return build_ack(message, "AR", error)


async def _serve_connection(reader, writer, handler: Handler) -> None:
    peer = writer.get_extra_info("peername")
    MLLP_PEER.set(peer[0] if peer else None)  # for the audit record of each message (ihe.audit)
    try:
        while True:
            try:
                block = await reader.readblock()
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip(b"\x0b\x1c\r\n "):
                    log.warning("MLLP peer %s closed the connection mid-message", peer)
                return
            except InvalidBlockError:
                reply = build_ack(None, "AR", HL7Error("AR", "not an MLLP block: it must start with <VT> (0x0B)",
                                                      "100"))
            except ValueError:
                # The limit was overrun: what follows is the rest of a message we cannot read.
                error = HL7Error("AR", f"message larger than {MAX_MESSAGE_BYTES} bytes", "100")
                writer.writeblock(build_ack(None, "AR", error).encode("utf-8"))
                await writer.drain()
                return
            else:
                reply = await answer(block, handler)
            if reply is not None:
                writer.writeblock(reply.encode("utf-8"))
                await writer.drain()
    except ConnectionError:
        return
    except Exception:
        log.exception("MLLP connection from %s failed", peer)
    finally:
        writer.close()


async def start_mllp_server(host: str, port: int, handler: Handler,
                            node_tls: tls.NodeTls | None = None) -> asyncio.Server:
    """Listen on ``host:port`` (over mutual TLS when ``node_tls`` is set); every message is given to
    ``handler``. Close with ``.close()``."""
    loop = asyncio.get_running_loop()

    async def on_connect(reader, writer) -> None:
        await _serve_connection(reader, writer, handler)

    def framing() -> HL7StreamProtocol:  # as python-hl7's start_hl7_server builds it, so the TLS gate can wrap it
        return HL7StreamProtocol(HL7StreamReader(limit=MAX_MESSAGE_BYTES, loop=loop), on_connect, loop=loop)

    return await tls.create_server(framing, host, port, node_tls, logger=log, what=f"MLLP port {port}",
                                   reuse_address=True)
