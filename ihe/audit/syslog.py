"""Syslog RFC 5424 messages carrying audit records; RFC 5425 octet-counted framing (TLS/TCP).

Each record travels with its spool's identity and sequence number in structured data, so the
audit record repository can drop a record it already stored (the sender resends after a lost
acknowledgement): delivery is at least once, storage exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

# IHE ITI TF-2 3.20.6: facility 10 (security/authorization), severity 5 (notice); MSGID IHE+RFC-3881.
PRI = 10 * 8 + 5
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"
SD_ID = "xds@32473"  # private SD-ID (32473: the documentation enterprise number, RFC 5612)
MAX_FRAME_BYTES = 4 * 1024 * 1024


class SyslogError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SyslogMessage:
    hostname: str
    app_name: str
    procid: str
    msgid: str
    origin: str | None  # the spool that sent it
    seq: int | None  # its sequence number there
    timestamp: str
    payload: bytes


def _header_field(value: str, limit: int) -> str:
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def _sd_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def build_syslog(payload: bytes, *, hostname: str, app_name: str, procid: str, origin: str, seq: int,
                 timestamp: datetime | None = None) -> bytes:
    """One RFC 5424 message: header, structured data [xds@32473 origin seq], BOM + UTF-8 XML."""
    ts = (timestamp or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = (f"<{PRI}>1 {ts} {_header_field(hostname, 255)} {_header_field(app_name, 48)} "
              f"{_header_field(procid, 128)} {MSGID} "
              f'[{SD_ID} origin="{_sd_value(origin)}" seq="{seq}"] ')
    return header.encode("ascii") + BOM + payload


def frame(message: bytes) -> bytes:
    """RFC 5425 octet counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


_HEADER = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ")
_SD_ELEMENT = re.compile(rb'\[([^ \]=]+)((?: [^ =\]]+="(?:[^"\\]|\\.)*")*)\]')
_SD_PARAM = re.compile(rb' ([^ =\]]+)="((?:[^"\\]|\\.)*)"')


def _unescape(value: bytes) -> str:
    return re.sub(rb'\\(["\\\]])', rb"\1", value).decode("utf-8", errors="replace")


def parse_syslog(data: bytes) -> SyslogMessage:
    """Split an RFC 5424 message into its header fields, our structured data and the payload."""
    m = _HEADER.match(data)
    if m is None:
        raise SyslogError("not an RFC 5424 syslog message")
    rest = data[m.end():]
    params: dict[str, str] = {}
    if rest.startswith(b"-"):
        rest = rest[1:]
    else:
        while rest.startswith(b"["):
            sd = _SD_ELEMENT.match(rest)
            if sd is None:
                raise SyslogError("malformed structured data")
            if sd.group(1).decode("ascii", errors="replace") == SD_ID:
                params = {k.decode("ascii", errors="replace"): _unescape(v) for k, v in _SD_PARAM.findall(sd.group(2))}
            rest = rest[sd.end():]
    if rest.startswith(b" "):
        rest = rest[1:]
    if rest.startswith(BOM):
        rest = rest[len(BOM):]
    seq = params.get("seq")
    if seq is not None and not seq.isdigit():
        raise SyslogError(f"sequence number {seq!r} is not a number")

    def field_(i: int) -> str:
        return m.group(i).decode("ascii", errors="replace")

    return SyslogMessage(hostname=field_(3), app_name=field_(4), procid=field_(5), msgid=field_(6),
                         origin=params.get("origin"), seq=int(seq) if seq is not None else None,
                         timestamp=field_(2), payload=rest)


class FrameReader:
    """Incremental RFC 5425 deframer: feed bytes, take complete messages."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self.buffer = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out: list[bytes] = []
        while True:
            space = self.buffer.find(b" ", 0, 12)
            if space < 0:
                if len(self.buffer) >= 12:
                    raise SyslogError("octet count missing or too long")
                return out
            count = bytes(self.buffer[:space])
            if not count.isdigit() or count.startswith(b"0"):
                raise SyslogError(f"bad octet count {count[:12]!r}")
            n = int(count)
            if n > self.max_frame:
                raise SyslogError(f"frame of {n} bytes exceeds the limit of {self.max_frame}")
            if len(self.buffer) < space + 1 + n:
                return out
            out.append(bytes(self.buffer[space + 1:space + 1 + n]))
            del self.buffer[:space + 1 + n]
