"""The vocabulary every domain speaks: a resolved ``Space``, its table on one source, a ``Binding``.

A space is an identity (model, revision, dimensions, prompts, normalisation, transport); its
``model_version`` string is written into every row and pinned by a CHECK constraint, so the
database itself refuses a vector from another space.

``PipelineConfig.space(name)`` resolves a name once into a ``Space``; callers pass that object
down instead of the name. ``Space.on(source)`` gives the ``SpaceTable`` of that space for one
source: its qualified name, index name, DDL and row query. This module is the one place that
writes the HNSW DDL, the distance operators and the operator classes. It imports nothing of
ours, so that ``config`` can build these objects and every other package can receive them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from psycopg import sql

MAX_IDENT = 63

# One distance operator and one HNSW operator class per metric and storage type.
DISTANCE = {"cosine": "<=>", "l2": "<->", "ip": "<#>"}
OPS = {"vector": {"cosine": "vector_cosine_ops", "l2": "vector_l2_ops", "ip": "vector_ip_ops"},
       "halfvec": {"cosine": "halfvec_cosine_ops", "l2": "halfvec_l2_ops", "ip": "halfvec_ip_ops"}}
# pgvector's HNSW indexes `vector` up to 2,000 dimensions and `halfvec` up to 4,000.
HNSW_MAX_DIM = 4000


def model_version(name: str, fingerprint: str) -> str:
    """``<space>@<fingerprint[:16]>``: the label written into (and pinned on) every row."""
    return f"{name}@{fingerprint[:16]}"


def space_table_name(source: str, space: str) -> str:
    """``<source>__<space>``, shortened with a hash when past PostgreSQL's 63-byte limit."""
    name = f"{source}__{space}"
    if len(name.encode()) <= MAX_IDENT - 6:  # room for the "_hnsw" index suffix
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_IDENT - 16]}_{digest}"


def index_name(table: str) -> str:
    return f"{table[:57]}_hnsw"


def hash_expr(fingerprint: str, content: sql.Composable) -> sql.Composed:
    """content_sha256 computed by the database over the space fingerprint and the content."""
    return sql.SQL("sha256(convert_to({} || {}, 'UTF8'))").format(sql.Literal(fingerprint + "\n"), content)


@dataclass(frozen=True)
class Space:
    """A configured space, resolved once: its config plus what every consumer derives from it.

    Config fields (``dimensions``, ``index``, ``transport``, ``model``, ...) read through.
    """

    name: str
    cfg: Any  # SentenceTransformersSpace | OpenAISpace (config.py)
    schema: str  # the project schema that holds its tables
    retention_days: float

    def __getattr__(self, item: str):
        if item.startswith("__") or item == "cfg":
            raise AttributeError(item)
        return getattr(self.cfg, item)

    @cached_property
    def model_version(self) -> str:
        return model_version(self.name, self.cfg.fingerprint)

    @property
    def fingerprint(self) -> str:
        return self.cfg.fingerprint

    @property
    def storage_type(self) -> str:
        return self.cfg.storage_type

    @property
    def operator(self) -> str:
        return DISTANCE[self.cfg.index.ops]

    @property
    def distance(self) -> sql.SQL:
        """The distance operator, ready to compose: ``ORDER BY embedding {distance} %s``."""
        return sql.SQL(self.operator)

    @property
    def opclass(self) -> str:
        return OPS[self.storage_type][self.cfg.index.ops]

    def content_hash(self, content: sql.Composable) -> sql.Composed:
        return hash_expr(self.fingerprint, content)

    def hnsw_ddl(self, table: sql.Identifier, index: str, column: str = "embedding", *,
                 concurrently: bool = False) -> sql.Composed:
        """The one HNSW DDL: this space's operator class and build parameters on ``table.column``."""
        return sql.SQL("CREATE INDEX {conc}IF NOT EXISTS {idx} ON {tbl} USING hnsw ({col} {ops}) "
                       "WITH (m = {m}, ef_construction = {ef})").format(
            conc=sql.SQL("CONCURRENTLY " if concurrently else ""), idx=sql.Identifier(index), tbl=table,
            col=sql.Identifier(column), ops=sql.SQL(self.opclass), m=sql.Literal(self.cfg.index.m),
            ef=sql.Literal(self.cfg.index.ef_construction))

    def vector_param(self, vector, storage_type: str | None = None):
        """A query vector typed for the column it is compared with."""
        from pgvector import HalfVector, Vector

        return HalfVector(vector) if (storage_type or self.storage_type) == "halfvec" else Vector(vector)

    def on(self, source) -> SpaceTable:
        """This space's table for ``source`` (a ``SourceTable`` or a source name)."""
        return SpaceTable(self, getattr(source, "name", source))


@dataclass(frozen=True)
class SpaceTable:
    """One per-model table ``<project_schema>.<source>__<space>``."""

    space: Space
    source: str

    @property
    def name(self) -> str:
        return space_table_name(self.source, self.space.name)

    @property
    def schema(self) -> str:
        return self.space.schema

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def index_name(self) -> str:
        return index_name(self.name)

    def ddl(self, id_type: str) -> sql.Composed:
        """CREATE TABLE; ``id_type`` is read from pg_catalog's format_type(), never from config."""
        return sql.SQL(
            "CREATE TABLE IF NOT EXISTS {tbl} (\n"
            "    source_id {id_type} NOT NULL,\n"
            "    model_version text NOT NULL CONSTRAINT {ck} CHECK (model_version = {mv}),\n"
            "    content_sha256 bytea NOT NULL,\n"
            "    embedding {vtype}({dims}) NOT NULL,\n"
            "    embedded_at timestamptz NOT NULL DEFAULT now(),\n"
            # Covering primary key: drift counts (versions, coverage, stale, orphans) read the index
            # alone, never the wide vector heap.
            "    PRIMARY KEY (source_id) INCLUDE (model_version, content_sha256)\n"
            ")"
        ).format(tbl=self.ident, id_type=sql.SQL(id_type), ck=sql.Identifier(f"{self.name[:50]}_version_ck"),
                 mv=sql.Literal(self.space.model_version), vtype=sql.SQL(self.space.storage_type),
                 dims=sql.Literal(self.space.dimensions))

    def index_ddl(self) -> sql.Composed:
        return self.space.hnsw_ddl(self.ident, self.index_name)

    def rows(self, source) -> sql.Composed:
        """SELECT source_id, embedding, space, model_version of the source's eligible rows only."""
        return sql.SQL(
            "SELECT e.source_id, e.embedding, {space}::text AS space, e.model_version FROM {tbl} e "
            "WHERE EXISTS (SELECT 1 FROM ({eligible}) s WHERE s.id = e.source_id)"
        ).format(tbl=self.ident, eligible=source.eligible_rows(), space=sql.Literal(self.space.name))


STORAGE_TABLE, STORAGE_LEGACY = "table", "legacy_column"


@dataclass(frozen=True)
class Binding:
    """A row of ``<project_schema>.bindings``: where one space's vectors of one source live."""

    source: str
    space: str
    storage: str  # 'table' (ours) or 'legacy_column' (the app's own column, adopted read-only)
    table_schema: str
    table_name: str
    vector_column: str
    status: str = "shadow"  # shadow | active | retired | deleted
    previous_space: str | None = None
    created_at: datetime | None = None
    activated_at: datetime | None = None
    retired_at: datetime | None = None
    delete_after: datetime | None = None
    deleted_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict | None) -> Binding | None:
        if row is None:
            return None
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in row.items() if k in known})

    @property
    def is_legacy(self) -> bool:
        return self.storage == STORAGE_LEGACY

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.table_schema, self.table_name)

    @property
    def qualified(self) -> str:
        return f"{self.table_schema}.{self.table_name}"

    @property
    def column(self) -> str:
        return f"{self.qualified}.{self.vector_column}"
