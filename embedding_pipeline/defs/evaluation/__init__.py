"""The evaluation domain: shadow retrieval evals (each candidate space against the active one, per
source) with their nDCG gate, and one smoke asset per configured space."""

import dagster as dg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.defs.evaluation import assets
from embedding_pipeline.defs.evaluation.smoke_assets import build_smoke


def build(config: PipelineConfig) -> dg.Definitions:
    return dg.Definitions.merge(assets.build(config), build_smoke(config))
