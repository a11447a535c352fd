"""Small load-generation helpers shared by the benchmarks: a bounded closed loop and percentiles.

Every loop here is bounded in count and time and targets loopback only.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(slots=True)
class LoadResult:
    requests: int
    failures: int
    seconds: float
    latencies_ms: list[float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        return percentile(self.latencies_ms, p)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def closed_loop(
    call: Callable[[int], Awaitable[bool]], *, concurrency: int, total: int, max_seconds: float
) -> LoadResult:
    """Run ``call(i)`` for i in range(total) with ``concurrency`` workers; stop early after max_seconds.

    ``call`` returns True on success. Latency of every call is recorded.
    """
    next_index = 0
    failures = 0
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + max_seconds

    async def worker() -> None:
        nonlocal next_index, failures
        while next_index < total and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            t0 = time.perf_counter()
            ok = await call(i)
            latencies.append((time.perf_counter() - t0) * 1000)
            if not ok:
                failures += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(len(latencies), failures, time.perf_counter() - start, latencies)


class KeepAliveClient:
    """A minimal HTTP/1.1 keep-alive client for latency measurements.

    Written here (not aiohttp's client) so that a latency figure is the server's: aiohttp's client
    adds 0.1 to 1 ms of its own per request on this machine, as much as the query being measured.
    It understands only what our servers answer: Content-Length bodies.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> KeepAliveClient:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        response_head = await self.reader.readuntil(b"\r\n\r\n")
        lines = response_head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(b":", 1)[1]) for line in lines[1:] if line.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)
