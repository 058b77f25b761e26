"""Time rules shared by cutover, rollback and deletion: retention windows and how to print a time."""

from __future__ import annotations

from datetime import datetime

from embedding_pipeline.config import PipelineConfig

DAY_S = 86_400


def at_text(ts: datetime | None) -> str:
    return f" at {ts.isoformat(timespec='seconds')}" if ts else ""


def retention_days(config: PipelineConfig, space: str) -> float:
    return config.retention_for(space) if space in config.spaces else config.retention_days
