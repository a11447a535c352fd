"""Helpers of the deployment tests: a started process's output, the databases a network made."""

from __future__ import annotations

import queue
import random
import socket
import subprocess
import threading
import time

import asyncpg


class Output:
    """The lines a process prints (stdout and stderr), read without blocking the test."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        """The first line containing ``text``, waiting for it when it has not come yet."""
        for line in self.lines:
            if text in line:
                return line
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} within {timeout} s:\n" + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"output ended before a line with {text!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if text in line:
                return line

    def rest(self, timeout: float = 30) -> list[str]:
        """Every line until the process closes its output."""
        deadline = time.monotonic() + timeout
        while (line := self._queue.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            self.lines.append(line)
        return self.lines


async def drop_databases(url: str, prefix: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for name in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", prefix + "%"):
            await conn.execute(f'DROP DATABASE "{name["datname"]}" WITH (FORCE)')
    finally:
        await conn.close()


# Every port xds-local opens with its defaults (registry, MLLP, audit, OIDC, portal, three hospitals'
# repository, imaging source and DICOM ports).
REGION_PORTS = (2575, 6514, 8010, 8020, 8021, 8022, 8040, 8041, 8042, 8070, 8090, 11112, 11113, 11114)
EPHEMERAL_START = 32768  # Linux's default ip_local_port_range starts here: outgoing sockets take such ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def region_port_offset(low: int = 12000) -> int:
    """A --port-offset for xds-local whose ports are all free now and all below the ephemeral range, so that
    no outgoing connection of another test can hold one of them when the region starts."""
    high = EPHEMERAL_START - max(REGION_PORTS) - 10
    for _ in range(200):
        offset = low + random.randrange((high - low) // 10) * 10
        if all(_free(port + offset) for port in REGION_PORTS):
            return offset
    raise AssertionError(f"no free port offset between {low} and {high} for an xds-local region")

