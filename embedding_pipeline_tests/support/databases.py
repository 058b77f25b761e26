"""Scratch databases on the session's server: fresh, or copies of a template built once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from embedding_pipeline.db.connection import (
    Database,
    ensure_extension,
    url_with_database,
)


def create_database(admin_url: str, name: str, *, template: str | None = None) -> None:
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(query)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def scratch_database(admin_url: str, prefix: str, *, template: str | None = None) -> Iterator[str]:
    """A fresh database (or a copy of ``template``) on the session's server, dropped afterwards even if in use."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    create_database(admin_url, name, template=template)
    try:
        yield name
    finally:
        drop_database(admin_url, name)


def vector_database(admin_url: str, name: str, home: Path) -> Database:
    """The database ``name`` with pgvector installed, as a project Database with its own home."""
    db = Database(url=url_with_database(admin_url, name), embedded=False, home=home)
    with db.connect(autocommit=True) as conn:
        ensure_extension(conn)
    return db
