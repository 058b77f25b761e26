"""Embedding providers behind one small interface; one module per transport."""

from embedding_pipeline.providers.base import (
    EmbeddingProvider,
    EmbedResult,
    validate_vectors,
)
from embedding_pipeline.providers.factory import build_provider

__all__ = ["EmbeddingProvider", "EmbedResult", "build_provider", "validate_vectors"]
