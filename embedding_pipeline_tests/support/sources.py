"""Small source tables for tests, created on the real database, and prepared for the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.connection import Database
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.setup import prepare_source

TOPICS = [
    "The pasta needs salted boiling water and ten minutes on the stove.",
    "Our flight to Lisbon was delayed by two hours because of fog.",
    "The deploy failed because the migration locked the orders table.",
    "Interest rates rose again and mortgage payments went up.",
    "Drink water and sleep eight hours to recover from the flu.",
    "Pomidory w ogrodzie dojrzewają szybciej w ciepłym wrześniu.",
    "Koncert orkiestry w filharmonii trwał prawie trzy godziny.",
    "Zespół wsparcia odpowiedział na zgłoszenie klienta w godzinę.",
]


def make_documents(conn, n: int = 60, *, schema: str = "public", table: str = "documents",
                   id_column: str = "id", text_column: str = "content") -> list[str]:
    """A documents-like table: text ids, content, a legacy 384-d column, soft delete."""
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL(
        "CREATE TABLE {tbl} ({id} text PRIMARY KEY, {text} text, embedding vector(384), "
        "deleted_at timestamptz, updated_at timestamptz NOT NULL DEFAULT now())"
    ).format(tbl=sql.Identifier(schema, table), id=sql.Identifier(id_column), text=sql.Identifier(text_column)))
    ids = [f"doc{i:05d}" for i in range(n)]
    rows = [(i, f"{TOPICS[k % len(TOPICS)]} Note {k}.") for k, i in enumerate(ids)]
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {} ({}, {}) VALUES (%s, %s)").format(
            sql.Identifier(schema, table), sql.Identifier(id_column), sql.Identifier(text_column)), rows)
    conn.commit()
    return ids


class PreparedSource(NamedTuple):
    """What the ``prepared_source`` fixture returns: unpacks as ``cfg, provider_for, ids``."""

    cfg: PipelineConfig
    provider_for: Callable[..., object]
    ids: list[str]


def prepare_documents(db: Database, cfg: PipelineConfig, provider_for, spaces, rows: int,
                      seed: Callable | None = None) -> list[str]:
    """The project schema, a ``documents`` table of ``rows`` rows, ``seed(conn, ids)`` if given, then the spaces
    registered and their tables created (nothing embedded yet)."""
    with db.connect() as conn:
        ensure_schema(conn, cfg.project_schema)
        conn.commit()
        ids = make_documents(conn, rows)
        if seed:
            seed(conn, ids)
            conn.commit()
        prepare_source(conn, cfg, "documents", provider_for, spaces=list(spaces))
    return ids
