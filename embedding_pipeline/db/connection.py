"""Connections to the vector database: the embedded default or an external server.

``EMBEDDING_PIPELINE_DATABASE_URL`` names an external server (PostgreSQL >= 14 with
pgvector >= 0.7); we then never start one. Without it the embedded server is started in
the state folder and the project's data lives in its database ``embedding_pipeline``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict

from embedding_pipeline.config import state_dir
from embedding_pipeline.db import embedded as embedded_postgres
from embedding_pipeline.db import queries
from embedding_pipeline.errors import DatabaseError

DATABASE_URL_ENV = "EMBEDDING_PIPELINE_DATABASE_URL"
DAGSTER_DATABASE_URL_ENV = "EMBEDDING_PIPELINE_DAGSTER_DATABASE_URL"
EMBEDDED_DATABASE = "embedding_pipeline"
DAGSTER_DATABASE = "dagster"
MIN_SERVER_MAJOR = 14
MIN_PGVECTOR = (0, 7)


def url_with_database(url: str, dbname: str, driver: str | None = None) -> str:
    """The same server and credentials, another database; works for socket URLs too."""
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    user = quote(str(params.pop("user", "") or ""))
    password = params.pop("password", None)
    host = str(params.pop("host", "") or "")
    port = params.pop("port", None)
    db = quote(str(params.pop("dbname")))
    userinfo = f"{user}:{quote(str(password))}@" if password else (f"{user}@" if user else "")
    netloc = "" if host.startswith("/") or not host else host
    if netloc and port:
        netloc += f":{port}"
    query = dict(params)
    if host.startswith("/"):
        query["host"] = host
        if port:
            query["port"] = port
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    tail = f"?{urlencode(query)}" if query else ""
    return f"{scheme}://{userinfo}{netloc}/{db}{tail}"


def _scrub(message: str, url: str) -> str:
    """A driver message with the URL's password (if any) masked."""
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        return "<message withheld: the URL could not be parsed>"
    return message.replace(str(password), "***") if password else message


def redact(url: str) -> str:
    """A URL fit for logs: the password replaced."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database url>"
    if params.get("password"):
        params["password"] = "***"
    host = params.get("host") or "localhost"
    if host.startswith("/"):  # a Unix socket directory
        return f"postgresql://{params.get('user', '')}@/{params.get('dbname', '')}?host={host}"
    return f"postgresql://{params.get('user', '')}@{host}:{params.get('port', 5432)}/{params.get('dbname', '')}"


def _ensure_database(admin_url: str, dbname: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(queries.select_database(), (dbname,)).fetchone()
        if not exists:
            try:
                conn.execute(queries.create_database(dbname))
            except psycopg.errors.DuplicateDatabase:
                pass  # another process won the race


@dataclass(frozen=True)
class Database:
    """Where the data lives. Cheap to build; resolve() starts the embedded server if needed."""

    url: str
    embedded: bool
    home: Path

    @classmethod
    def resolve(cls, env: dict[str, str] | None = None) -> "Database":
        env = dict(os.environ if env is None else env)
        home = state_dir(env)
        if env.get(DATABASE_URL_ENV):
            return cls(url=env[DATABASE_URL_ENV], embedded=False, home=home)
        admin = embedded_postgres.start(home)
        _ensure_database(admin, EMBEDDED_DATABASE)
        return cls(url=url_with_database(admin, EMBEDDED_DATABASE), embedded=True, home=home)

    def dagster_url(self, env: dict[str, str] | None = None) -> str:
        """The Dagster instance's own database on the same server, created if missing.

        dagster-postgres is written for psycopg2 (it binds ``NOTIFY run_events, %(id)s`` client
        side; psycopg 3 sends it as a server-side parameter, which NOTIFY rejects). SQLAlchemy
        2.1 reads a bare ``postgresql://`` as psycopg 3, so the driver is named explicitly.
        """
        env = dict(os.environ if env is None else env)
        if env.get(DAGSTER_DATABASE_URL_ENV):
            return env[DAGSTER_DATABASE_URL_ENV]
        _ensure_database(self.url, DAGSTER_DATABASE)
        return url_with_database(self.url, DAGSTER_DATABASE, driver="psycopg2")

    def connect(self, *, autocommit: bool = False, **kwargs) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.url, autocommit=autocommit, **kwargs)
        except psycopg.OperationalError as e:
            raise DatabaseError(
                f"cannot connect to {redact(self.url)}: {_scrub(str(e).strip().splitlines()[0], self.url)}. "
                f"Check {DATABASE_URL_ENV} (or unset it to use the embedded server)."
            ) from None
        except psycopg.ProgrammingError:
            # libpq's message for an unparseable URL quotes the whole URL, password included.
            raise DatabaseError(
                f"the database URL is not valid ({redact(self.url)}): check {DATABASE_URL_ENV}"
            ) from None
        register_vector_types(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        with self.connect() as conn:
            with conn.transaction():
                yield conn

    def pg_bin(self, name: str, configured: str | None = None) -> Path:
        """A client binary (pg_dump, pg_restore, psql): configured path, embedded, or PATH."""
        import shutil

        if configured:
            return Path(configured)
        if self.embedded:
            return embedded_postgres.bin_dir() / name
        found = shutil.which(name)
        if found:
            return Path(found)
        return embedded_postgres.bin_dir() / name


def register_vector_types(conn: psycopg.Connection) -> None:
    """Register pgvector's types on a connection where the extension exists (no-op otherwise)."""
    from pgvector.psycopg import register_vector

    try:
        register_vector(conn)
    except psycopg.ProgrammingError:
        # The extension is not created yet in this database; ensure_extension() will.
        if not conn.autocommit:
            conn.rollback()


def ensure_extension(conn: psycopg.Connection) -> str:
    """CREATE EXTENSION vector if missing; return its version. Clear error when unavailable."""
    major = conn.info.server_version // 10000
    if major < MIN_SERVER_MAJOR:
        raise DatabaseError(f"PostgreSQL {major} is too old: embedding_pipeline needs {MIN_SERVER_MAJOR} or newer")
    row = conn.execute(queries.select_vector_version()).fetchone()
    if row is None:
        available = conn.execute(queries.select_vector_available()).fetchone()
        if not available:
            raise DatabaseError(
                "the pgvector extension is not installed on this PostgreSQL server. Install pgvector >= 0.7 "
                "(https://github.com/pgvector/pgvector#installation) or unset "
                f"{DATABASE_URL_ENV} to use the embedded server, which ships it."
            )
        try:
            conn.execute(queries.create_vector_extension())
        except psycopg.errors.InsufficientPrivilege as e:
            raise DatabaseError(
                "pgvector is available but not created and this role may not create it: "
                "run `CREATE EXTENSION vector;` as a superuser in this database"
            ) from e
        except psycopg.errors.UniqueViolation:
            conn.rollback()  # created concurrently by another process
        row = conn.execute(queries.select_vector_version()).fetchone()
        register_vector_types(conn)
    version = row[0]
    parts = tuple(int(p) for p in version.split(".")[:2])
    if parts < MIN_PGVECTOR:
        raise DatabaseError(f"pgvector {version} is too old: needs {'.'.join(map(str, MIN_PGVECTOR))} or newer")
    return version


def table_exists(conn: psycopg.Connection, schema: str, table: str) -> bool:
    return conn.execute(queries.select_table_exists(), (schema, table)).fetchone() is not None


def column_types(conn: psycopg.Connection, schema: str, table: str) -> dict[str, str]:
    """Column name -> formatted type (e.g. 'vector(384)'), schema-qualified through pg_catalog."""
    rows = conn.execute(queries.select_column_types(), (schema, table)).fetchall()
    return {name: typ for name, typ in rows}


def declared_dimension(conn: psycopg.Connection, schema: str, table: str, column: str) -> int | None:
    """The dimension a vector/halfvec column declares (atttypmod), or None when undeclared/missing."""
    row = conn.execute(queries.select_column_typmod(), (schema, table, column)).fetchone()
    if row is None:
        return None
    typmod, typname = row
    if typname not in ("vector", "halfvec", "sparsevec"):
        raise DatabaseError(f"{schema}.{table}.{column} is of type {typname}, not a pgvector type")
    return typmod if typmod > 0 else None
