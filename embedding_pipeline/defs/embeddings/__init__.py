"""The embeddings domain: one re-embed asset per space (per source partition) and the change-capture sensor."""

import dagster as dg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.defs.embeddings import assets
from embedding_pipeline.defs.embeddings.capture_sensor import build_capture


def build(config: PipelineConfig) -> dg.Definitions:
    return dg.Definitions.merge(assets.build(config), build_capture(config))
