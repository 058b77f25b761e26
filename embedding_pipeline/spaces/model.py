"""Vector spaces: the registry, one table per (source, space), and the source queries.

A space is an identity (model, revision, dimensions, prompts, normalisation, transport);
its ``model_version`` string is written into every row and pinned by a CHECK constraint,
so the database itself refuses a vector from another space. The legacy in-place column
(e.g. ``documents.embedding``) is adopted as a read-only binding and never altered.
"""

from __future__ import annotations

import hashlib

from psycopg import sql

MAX_IDENT = 63


def model_version(name: str, cfg) -> str:
    return f"{name}@{cfg.fingerprint[:16]}"


def space_table_name(source: str, space: str) -> str:
    """``<source>__<space>``, shortened with a hash when past PostgreSQL's 63-byte limit."""
    name = f"{source}__{space}"
    if len(name.encode()) <= MAX_IDENT - 6:  # room for the "_hnsw" index suffix
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_IDENT - 16]}_{digest}"


def index_name(table: str) -> str:
    return f"{table[:57]}_hnsw"


OPS = {"vector": {"cosine": "vector_cosine_ops", "l2": "vector_l2_ops", "ip": "vector_ip_ops"},
       "halfvec": {"cosine": "halfvec_cosine_ops", "l2": "halfvec_l2_ops", "ip": "halfvec_ip_ops"}}


DISTANCE = {"cosine": "<=>", "l2": "<->", "ip": "<#>"}


def hash_expr(fingerprint: str, content: sql.Composable) -> sql.Composed:
    """content_sha256 computed by the database over the space fingerprint and the content."""
    return sql.SQL("sha256(convert_to({} || {}, 'UTF8'))").format(sql.Literal(fingerprint + "\n"), content)
