"""Helpers of the deployment tests: a started process's output, the databases a network made."""

from __future__ import annotations

import queue
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
