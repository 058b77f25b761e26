"""The backup domain: the verified backup asset per source table and its freshness check."""

from embedding_pipeline.defs.backup.assets import build

__all__ = ["build"]
