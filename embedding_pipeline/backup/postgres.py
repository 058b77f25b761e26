"""Postgres pieces of backup-before: table checksums, client binaries, pg_dump patterns, commands."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from embedding_pipeline.backup import queries
from embedding_pipeline.db import embedded as embedded_postgres
from embedding_pipeline.db.connection import Database, url_with_database
from embedding_pipeline.errors import BackupError

# Row text depends on these session settings; pinning them makes checksums comparable anywhere.
_CHECKSUM_SETTINGS = {"TimeZone": "UTC", "DateStyle": "ISO, YMD", "IntervalStyle": "postgres",
                      "extra_float_digits": "1", "bytea_output": "hex"}


@dataclass
class TableRef:
    schema: str
    table: str
    key: list[str] | None = None  # primary-key columns; looked up when None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


def primary_key(conn: psycopg.Connection, ref: TableRef) -> list[str]:
    rows = conn.execute(queries.select_primary_key(), (ref.schema, ref.table)).fetchall()
    return [r[0] for r in rows]


def table_checksum(conn: psycopg.Connection, ref: TableRef) -> tuple[int, str]:
    """(rows, md5 over the rows' md5s in key order). Keys are ordered by their text in the C
    collation so the order does not depend on the database's collation; without a primary key
    the whole row text orders them. Per-row md5s keep the aggregate at 32 bytes a row.

    Runs in a (sub)transaction that pins the settings row text depends on; inside a caller's
    open transaction those settings last until that transaction ends."""
    with conn.transaction():
        exists = conn.execute(queries.select_regclass(),
                              (sql.Identifier(ref.schema, ref.table).as_string(conn),)).fetchone()[0]
        if exists is None:
            raise BackupError(f"table {ref.qualified} does not exist")
        for name, value in _CHECKSUM_SETTINGS.items():
            conn.execute(queries.set_local_config(), (name, value))
        key = ref.key if ref.key is not None else primary_key(conn, ref)
        # The whole row breaks ties, so a caller-given key that is not unique still orders fully.
        rows, digest = conn.execute(queries.table_checksum(ref.schema, ref.table, key)).fetchone()
    return int(rows), digest


def split_password(url: str) -> tuple[str, str | None]:
    """The URL without its password (for argv and printing) and the password (for PGPASSWORD)."""
    params = conninfo_to_dict(url)
    password = params.pop("password", None) or None
    dbname = str(params.get("dbname") or "")
    return url_with_database(make_conninfo(**params), dbname), password


def pg_env(password: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = password
    return env


def run(cmd: list[str], env: dict[str, str], what: str, password: str | None) -> str:
    """Run a client; its stdout, or a BackupError with the last lines of its output (password masked)."""
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise BackupError(f"{what} could not start: {e}") from None
    if proc.returncode != 0:
        text = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        if password:
            text = text.replace(password, "***")
        raise BackupError(f"{what} failed (exit {proc.returncode}): {text}")
    return proc.stdout


def pg_client(db: Database, name: str, configured: str | None, server_major: int) -> tuple[Path, str]:
    """A pg_dump/pg_restore at least as new as the server. Unconfigured, an old one on PATH falls
    back to the embedded server's binaries, which are new enough for any supported server."""
    candidates = [db.pg_bin(name, configured)]
    if not configured:
        embedded = embedded_postgres.bin_dir() / name
        if embedded not in candidates:
            candidates.append(embedded)
    problems = []
    for path in candidates:
        if not (path.is_file() and os.access(path, os.X_OK)):
            problems.append(f"{path} not found")
            continue
        try:
            out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            problems.append(f"{path} did not run: {e}")
            continue
        match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
        if not match:
            problems.append(f"{path} printed no PostgreSQL version ({out[:80]!r})")
        elif int(match.group(1)) < server_major:
            version = out.split(")")[-1].strip()
            problems.append(f"{path} is {version}, older than the server's major version {server_major}")
        else:
            return path, out
    raise BackupError(f"no usable {name}: {'; '.join(problems)}. Install the PostgreSQL {server_major} client "
                      f"(or newer) or set backup.{name} to its path")


def server_version(conn: psycopg.Connection) -> tuple[int, str]:
    return conn.info.server_version // 10000, conn.execute(queries.show_server_version()).fetchone()[0]


def missing_tables(conn: psycopg.Connection, refs: list[TableRef]) -> list[str]:
    return [f"{r.schema}.{r.table}" for r in refs if conn.execute(queries.select_regclass(), (sql.Identifier(
        r.schema, r.table).as_string(conn),)).fetchone()[0] is None]


def referenced_closure(conn: psycopg.Connection, refs: list[TableRef]) -> list[TableRef]:
    """``refs`` plus every table their foreign keys reach, transitively: a restore needs them all."""
    out = {(r.schema, r.table): r for r in refs}
    todo = list(out)
    while todo:
        schema, table = todo.pop()
        for s, t in conn.execute(queries.select_foreign_key_targets(), (schema, table)).fetchall():
            if (s, t) not in out:
                out[(s, t)] = TableRef(s, t)
                todo.append((s, t))
    return list(out.values())


def dump_pattern(ref: TableRef) -> str:
    # Inside double quotes pg_dump's pattern characters (* ? . and regex ones) are literal and
    # a quote is doubled: exactly SQL identifier quoting, applied unconditionally.
    return ".".join('"' + part.replace('"', '""') + '"' for part in (ref.schema, ref.table))


def restore_commands(pg_restore: str, url: str, dump: Path, manifest: dict) -> list[str]:
    if manifest.get("scope") == "database":
        # A whole-database dump carries its schemas, extensions, functions and triggers.
        return [shlex.join([pg_restore, "--no-owner", "--clean", "--if-exists", "--single-transaction",
                            "--exit-on-error", "--dbname", url, str(dump.resolve())])]
    # pg_dump -t leaves out the tables' schemas and the vector extension; the target needs both.
    ext = manifest.get("extension")
    schemas = dict.fromkeys(manifest["schemas"] + ([ext["schema"]] if ext else []))
    stmts = [queries.create_schema(s) for s in schemas]
    if ext:
        stmts.append(queries.create_vector_extension(ext["schema"]))
    prep = "; ".join(s.as_string() for s in stmts)
    psql = str(Path(pg_restore).with_name("psql"))
    return [
        shlex.join([psql, "--dbname", url, "-v", "ON_ERROR_STOP=1", "-c", prep]),
        # --clean replaces only the tables in the dump; everything else in the database is left alone.
        shlex.join([pg_restore, "--no-owner", "--clean", "--if-exists", "--single-transaction",
                    "--exit-on-error", "--dbname", url, str(dump.resolve())]),
    ]

