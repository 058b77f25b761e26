"""The test configuration and narrowed copies of it."""

from __future__ import annotations

from pathlib import Path

from embedding_pipeline.config import PipelineConfig

TEST_CONFIG = Path(__file__).parents[2] / "embedding_pipeline" / "pipeline.yaml"


def narrowed(config: PipelineConfig, *, sources: tuple[str, ...] = ("documents",), source: dict | None = None,
             spaces: dict[str, dict] | None = None, **update) -> PipelineConfig:
    """``config`` with only ``sources``; ``source`` updates the first of them, ``spaces`` updates the named
    spaces (``{"e5-small": {"timeout_s": 8}}``) and ``update`` sets top-level fields."""
    kept = {name: config.sources[name] for name in sources}
    if source:
        kept[sources[0]] = kept[sources[0]].model_copy(update=source)
    space_cfgs = dict(config.spaces)
    for name, changes in (spaces or {}).items():
        space_cfgs[name] = space_cfgs[name].model_copy(update=changes)
    return config.model_copy(update={"sources": kept, "spaces": space_cfgs, **update})
