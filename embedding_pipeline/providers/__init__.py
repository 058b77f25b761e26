"""Embedding providers behind one small interface; one module per transport.

``base`` (interface, batching, response validation), ``sentence_transformers``, ``openai_compat``,
``factory`` (config -> provider), ``cache`` (one provider per space identity per process),
``endpoint`` (local / internal / cloud classification), ``weights`` (offline model weights).
A new transport is one module here plus one entry in ``config``'s tagged union.

May import: ``config``, ``errors``.
"""

from embedding_pipeline.providers.base import (
    EmbeddingProvider,
    EmbedResult,
    validate_vectors,
)
from embedding_pipeline.providers.factory import build_provider

__all__ = ["EmbeddingProvider", "EmbedResult", "build_provider", "validate_vectors"]
