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

