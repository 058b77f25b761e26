"""A configured source table, checked against the live catalog, and the queries over its rows.

Eligible rows are those the operator's ``row_filter`` keeps whose text is not blank; every per-model
table and the legacy column are read through them, so soft-deleted or blank rows never appear.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from embedding_pipeline.config import SourceConfig
from embedding_pipeline.db.connection import column_types, table_exists
from embedding_pipeline.errors import ConfigError
from embedding_pipeline.spaces import queries
from embedding_pipeline.spaces.queries import HAS_TEXT  # noqa: F401 (re-exported for embeddings/)


@dataclass(frozen=True)
class SourceTable:
    """A configured source table, checked against the live catalog."""

    name: str
    cfg: SourceConfig
    id_type: str

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.cfg.schema_, self.cfg.table)

    @property
    def qualified(self) -> str:
        return f"{self.cfg.schema_}.{self.cfg.table}"

    def eligible_rows(self) -> sql.Composed:
        """SELECT id, content of rows that should have a vector: filter passes, text not blank."""
        c = self.cfg
        return queries.eligible_rows(self.ident, c.id_column, c.text_column, c.row_filter)

    def legacy_rows(self, space, column: str) -> sql.Composed:
        """SELECT source_id, embedding, space, model_version of the adopted column's eligible rows."""
        c = self.cfg
        return queries.legacy_rows(self.ident, c.id_column, c.text_column, c.row_filter, column, space.name,
                                   space.model_version)


def inspect_source(conn: psycopg.Connection, name: str, cfg: SourceConfig) -> SourceTable:
    """Check the table and columns exist; raise a ConfigError naming what is missing and the fix."""
    if not table_exists(conn, cfg.schema_, cfg.table):
        raise ConfigError(
            f"sources.{name}: table {cfg.schema_}.{cfg.table} does not exist in this database; "
            "fix `schema`/`table` in the config or create the table"
        )
    cols = column_types(conn, cfg.schema_, cfg.table)
    for key in ("id_column", "text_column", "legacy_vector_column", "updated_at_column"):
        col = getattr(cfg, key)
        if col is not None and col not in cols:
            raise ConfigError(
                f"sources.{name}.{key}: column {col!r} not found in {cfg.schema_}.{cfg.table}; "
                f"its columns are {sorted(cols)}"
            )
    if cfg.row_filter:
        try:
            with conn.transaction():
                conn.execute(queries.explain_row_filter(sql.Identifier(cfg.schema_, cfg.table), cfg.row_filter))
        except psycopg.Error as e:
            raise ConfigError(f"sources.{name}.row_filter is not a valid expression on {cfg.schema_}.{cfg.table}: "
                              f"{e.diag.message_primary}") from None
    return SourceTable(name=name, cfg=cfg, id_type=cols[cfg.id_column])
