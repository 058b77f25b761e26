"""The validator's cheap half, run when the code location loads.

Like Honcho's startup validator, a declared dimension that disagrees with the config stops
the code location from loading, with the table, both numbers and the fix. The canary half
needs the models and runs before every write instead. Loading never starts a database: when
none is reachable (e.g. `dg check defs` on a fresh clone) the check is skipped with a warning.
"""

from __future__ import annotations

import logging
import os

import psycopg

from embedding_pipeline.config import PipelineConfig, state_dir
from embedding_pipeline.db import embedded as embedded_postgres
from embedding_pipeline.db.connection import DATABASE_URL_ENV, Database
from embedding_pipeline.errors import DatabaseError, ValidationFailed
from embedding_pipeline.spaces.source import inspect_source
from embedding_pipeline.spaces.validator import dimension_checks

log = logging.getLogger(__name__)


def _reachable_database() -> Database | None:
    if os.environ.get(DATABASE_URL_ENV):
        return Database.resolve()
    home = state_dir()
    if embedded_postgres.running_pid(home) is None:
        return None
    return Database.resolve()


def validate_on_load(config: PipelineConfig) -> None:
    if os.environ.get("EMBEDDING_PIPELINE_SKIP_LOAD_VALIDATION") == "1":
        return
    try:
        db = _reachable_database()
        if db is None:
            log.warning("no database running: dimension validation skipped at load")
            return
        with db.connect(connect_timeout=5) as conn:
            sources = []
            for name, src in config.sources.items():
                try:
                    sources.append(inspect_source(conn, name, src))
                except Exception as e:  # an uncreated source table is reported by `validate`, not fatal here
                    log.warning("validation at load: %s", e)
            failures = [c for c in dimension_checks(conn, config, sources) if not c.ok]
    except (DatabaseError, psycopg.Error) as e:
        log.warning("validation at load skipped: %s", e)
        return
    if failures:
        raise ValidationFailed("; ".join(c.message for c in failures))
