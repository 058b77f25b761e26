"""Built providers, kept for the whole test session: each model loads once, not once per module."""

from __future__ import annotations

from collections.abc import Callable

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.providers import build_provider


class ProviderCache:
    """Providers keyed by space name and that space's config (a changed space gets its own provider).

    ``copy`` asks for a separate instance of the same space, for tests that run two at once.
    A test that wraps a provider's methods builds its own with ``build_provider`` instead.
    """

    def __init__(self):
        self._built: dict[tuple[str, str, str], object] = {}

    def get(self, config: PipelineConfig, name: str, copy: str = ""):
        space = config.space(name)
        key = (name, space.model_dump_json(), copy)
        if key not in self._built:
            self._built[key] = build_provider(name, space)
        return self._built[key]

    def for_config(self, config: PipelineConfig) -> Callable[..., object]:
        """``provider_for(name, copy="")`` as the core's functions take it."""
        return lambda name, copy="": self.get(config, name, copy)

    def close(self) -> None:
        for provider in self._built.values():
            provider.close()
        self._built.clear()
