"""Build the provider for a space from its tagged config."""

from __future__ import annotations

from embedding_pipeline.config import OpenAISpace, SentenceTransformersSpace
from embedding_pipeline.providers.base import EmbeddingProvider


def build_provider(name: str, config) -> EmbeddingProvider:
    """``config``: a resolved ``Space`` or its transport config."""
    config = getattr(config, "cfg", config)
    if isinstance(config, SentenceTransformersSpace):
        from embedding_pipeline.providers.sentence_transformers import (
            SentenceTransformersProvider,
        )

        return SentenceTransformersProvider(name, config)
    if isinstance(config, OpenAISpace):
        from embedding_pipeline.providers.openai_compat import OpenAIProvider

        return OpenAIProvider(name, config)
    raise TypeError(f"no provider for transport of {type(config).__name__}")
