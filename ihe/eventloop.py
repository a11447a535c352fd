"""Run a service's main coroutine on uvloop when it is installed.

uvloop (libuv) roughly halves the event loop's own cost per request for aiohttp and asyncpg,
which matters on the 2-core machines hospitals give us; the standard loop is the fallback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run(main: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
