"""What every imaging source handler needs: settings, the database pool and the instance storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from imaging_source.settings import ImagingSourceSettings
from imaging_source.storage import FileStorage


@dataclass(slots=True)
class ImagingSource:
    settings: ImagingSourceSettings
    pool: asyncpg.Pool
    storage: FileStorage
    extras: dict[str, Any] = field(default_factory=dict)  # running servers and tasks, for shutdown
