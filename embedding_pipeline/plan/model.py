"""The migration plan's data: steps, per-source state, the plan, and index build estimates.

Plain data classes shared by ``gather`` (which fills them) and ``render`` (which prints them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.embeddings.cost import CostEstimate
from embedding_pipeline.embeddings.coverage import SpaceCounts
from embedding_pipeline.spaces.model import Binding, space_table_name
from embedding_pipeline.spaces.source import SourceTable

MIN_MEASURED_ROWS = 10_000  # smaller builds are dominated by fixed costs and extrapolate badly

DONE, PENDING, FAILED = "done", "pending", "failed"


@dataclass(frozen=True)
class IndexBuild:
    """One HNSW build: rows x dims took seconds (measured by a re-embed run, or the reference)."""

    rows: int
    dims: int
    seconds: float
    label: str


# Measured on this project's development machine (see spaces.build_index).
REFERENCE_BUILD = IndexBuild(100_000, 384, 75.0, "reference rate: 100k x 384 took 75 s at maintenance_work_mem=1GB "
                                                 "on this project's development machine (350 s at the default 64MB)")


@dataclass
class Step:
    name: str
    state: str  # done | pending | failed
    detail: str

    def to_json(self) -> dict:
        return {"step": self.name, "state": self.state, "detail": self.detail}


@dataclass
class SourcePlan:
    source: SourceTable
    counts: SpaceCounts
    binding: Binding | None = None
    active: Binding | None = None
    others: list[Binding] = field(default_factory=list)
    index_def: str | None = None
    view_def: str | None = None
    served: str | None = None
    search_fn: str | None = None
    triggers: list[str] = field(default_factory=list)
    capture: dict | None = None
    backup_now: list[str] = field(default_factory=list)
    eval: dict | None = None
    drift: dict | None = None
    backup: dict | None = None
    backup_check: tuple[bool, str] = (False, "")
    estimate: tuple[float, str] = (0.0, "")
    table_ddl: str = ""
    index_ddl: str = ""
    drop_legacy: str | None = None
    cost: CostEstimate | None = None  # None until the space's table exists (setup)
    steps: list[Step] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def table(self) -> str:
        return space_table_name(self.name, self.counts.space)


@dataclass
class Plan:
    space: str
    config: PipelineConfig
    generated_at: datetime
    registered: dict | None
    smoke: dict | None
    sources: list[SourcePlan]
    markdown: str = ""
    path: Path | None = None

    def to_json(self) -> dict:
        return {"space": self.space, "generated_at": self.generated_at.isoformat(timespec="seconds"),
                "path": str(self.path) if self.path else None,
                "checklist": {p.name: [s.to_json() for s in p.steps] for p in self.sources}}


def estimate_index_seconds(rows: int, dims: int, measured: list[IndexBuild] = ()) -> tuple[float, str]:
    """Seconds to build the HNSW index, scaled linearly by rows x dims from the largest usable
    measured build, else from the reference; the text says which (HNSW grows slightly faster
    than linearly, so read it as a lower bound)."""
    usable = [b for b in measured if b.rows >= MIN_MEASURED_ROWS and b.seconds > 0]
    base = max(usable, key=lambda b: b.rows * b.dims) if usable else REFERENCE_BUILD
    seconds = base.seconds * (rows * dims) / (base.rows * base.dims)
    how = base.label if base is not REFERENCE_BUILD or not measured else (
        f"{base.label}; the measured builds ({len(measured)}) were below {MIN_MEASURED_ROWS:,} rows, "
        "too small to extrapolate")
    return seconds, how


def backup_tables(config: PipelineConfig, p: SourcePlan) -> list[str]:
    """The tables the cutover gate wants in a verified backup: the source and the target table."""
    return sorted({p.source.qualified, f"{config.project_schema}.{p.table}"})
