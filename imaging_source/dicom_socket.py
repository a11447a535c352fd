"""Faster reads for pynetdicom's association sockets.

pynetdicom 3 reads a PDU's body 4 KiB per ``recv`` call: a 512 KiB CT slice is 128 calls, each
releasing and retaking the GIL, which on a busy process costs more than the data itself. ``recv``
here reads the same bytes (exactly ``nr_bytes``, or what came before the peer closed) straight
into one buffer in as few calls as the kernel allows.
"""

from __future__ import annotations

import socket

from pynetdicom.transport import AssociationSocket

_original_recv = AssociationSocket.recv


def _recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    sock = self.socket
    if not isinstance(sock, socket.socket) or type(sock) is not socket.socket:
        return _original_recv(self, nr_bytes)  # TLS and anything unusual: pynetdicom's own loop
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    nr_read = 0
    while nr_read < nr_bytes:
        n = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
        if not n:
            break
        nr_read += n
    view.release()
    if nr_read < nr_bytes:  # the peer closed: what came, as pynetdicom's own recv returns
        del buffer[nr_read:]
    return buffer


def install() -> None:
    """Use the faster ``recv`` for every association in this process (idempotent)."""
    AssociationSocket.recv = _recv  # type: ignore[method-assign]
