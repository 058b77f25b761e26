"""Backup-before, verified by a restore: Postgres tables (pg_dump -Fc) and optionally Redis (RDB).

Layout: ``<root>/<source>/<UTC timestamp>/{dump.pgc, dump.rdb, manifest.json}``. A backup counts
only once ``manifest.json`` says ``verified: true``, which is written after the dump was restored
into a scratch database and every table's row count and checksum matched.

Verification needs CREATE DATABASE (the scratch database); there is no scratch-schema fallback.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from embedding_pipeline.backup import queries
from embedding_pipeline.backup import redis as backup_redis
from embedding_pipeline.backup.catalog import (
    MANIFEST_FILE,
    apply_retention,
    check_backup_fresh,
    latest_verified,
    list_backups,
    read_manifest,
    sha256,
    write_manifest,
)
from embedding_pipeline.backup.postgres import (
    TableRef,
    dump_pattern,
    missing_tables,
    pg_client,
    pg_env,
    primary_key,
    restore_commands,
    run,
    server_version,
    split_password,
    table_checksum,
)
from embedding_pipeline.config import BackupConfig
from embedding_pipeline.db.connection import Database, redact, url_with_database
from embedding_pipeline.errors import BackupError, DatabaseError

__all__ = ["BackupReport", "TableRef", "apply_retention", "backup_root", "check_backup_fresh", "latest_verified",
           "list_backups", "read_manifest", "table_checksum", "take_backup", "verify_backup", "write_manifest"]

DUMP_FILE = "dump.pgc"
MANIFEST_FORMAT = 1
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class BackupReport:
    source: str
    path: Path
    manifest: Path
    created_at: str
    verified: bool
    tables: list[dict]
    dump_sha256: str
    pg_dump_version: str
    server_version: str
    backup_commands: list[str]
    restore_commands: list[str]
    redis: dict | None = None
    verified_at: str | None = None
    verify_error: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, m: dict, manifest_path: Path) -> "BackupReport":
        return cls(source=m["source"], path=manifest_path.parent, manifest=manifest_path, created_at=m["created_at"],
                   verified=bool(m.get("verified")), tables=m["tables"], dump_sha256=m["dump_sha256"],
                   pg_dump_version=m["pg_dump_version"], server_version=m["server_version"],
                   backup_commands=m["backup_commands"], restore_commands=m["restore_commands"],
                   redis=m.get("redis"), verified_at=m.get("verified_at"), verify_error=m.get("verify_error"),
                   extra={k: m.get(k) for k in ("database", "credentials", "restore_check")})

    def to_json(self) -> dict:
        return {"source": self.source, "path": str(self.path), "manifest": str(self.manifest),
                "created_at": self.created_at, "verified": self.verified, "verified_at": self.verified_at,
                "verify_error": self.verify_error, "tables": self.tables, "dump_sha256": self.dump_sha256,
                "pg_dump_version": self.pg_dump_version, "server_version": self.server_version,
                "backup_commands": self.backup_commands, "restore_commands": self.restore_commands,
                "redis": self.redis, **self.extra}


def backup_root(db: Database, cfg: BackupConfig) -> Path:
    path = Path(cfg.directory).expanduser()
    return path if path.is_absolute() else db.home / path


def _now() -> datetime:
    return datetime.now(UTC)


def _connect(db: Database, **kwargs) -> psycopg.Connection:
    try:
        return db.connect(**kwargs)
    except DatabaseError as e:
        raise BackupError(str(e)) from None


def _prepare_dir(parent: Path) -> Path:
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise BackupError(f"backup directory {parent} is not writable ({e.strerror or e}); "
                          "set backup.directory to a writable folder") from None
    stamp = _now().strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        path = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise BackupError(f"too many backups named {stamp} in {parent}")


def take_backup(db: Database, *, source: str, tables: list[TableRef], cfg: BackupConfig,
                redis_url: str | None = None, verify: bool = True) -> BackupReport:
    """Dump the tables (and Redis), write the manifest, then verify by restoring (unless told not to).

    Raises BackupError on any failure. Before the manifest exists a failure removes the new
    backup folder; after it, the folder stays with ``verified: false`` and the reason."""
    if not _SOURCE_NAME.match(source):
        raise BackupError(f"invalid source name {source!r}: letters, digits, '.', '_' and '-' only")
    refs = list({(t.schema, t.table): t for t in tables}.values())
    if not refs:
        raise BackupError(f"no tables to back up for source {source!r}")
    if redis_url:
        backup_redis.redact(redis_url)  # a malformed URL fails before any work
    root = backup_root(db, cfg)
    url, password = split_password(db.url)
    env = pg_env(password)
    with _connect(db, autocommit=True) as conn:
        server_major, server_ver = server_version(conn)
    pg_dump, dump_version = pg_client(db, "pg_dump", cfg.pg_dump, server_major)
    pg_restore, _ = pg_client(db, "pg_restore", cfg.pg_restore, server_major)
    if redis_url:
        backup_redis.ping(redis_url)  # fail before the (possibly long) pg_dump
    folder = _prepare_dir(root / source)
    dump = folder / DUMP_FILE
    whole = cfg.scope == "database"
    try:
        with _connect(db) as conn:
            conn.rollback()
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            # pg_dump reads the snapshot this transaction exported, so the checksums below
            # describe exactly the rows in the dump even while writers keep going.
            snapshot = conn.execute(queries.export_snapshot()).fetchone()[0]
            missing = missing_tables(conn, refs)
            if missing:
                raise BackupError(f"backup of source {source!r}: table(s) {', '.join(missing)} do not exist; "
                                  "nothing was dumped. Check the source's schema/table in the config")
            created = _now()
            args = [str(pg_dump), "--format=custom"]
            if not whole:
                args.append("--strict-names")
                for ref in refs:
                    args += ["-t", dump_pattern(ref)]
            partial = folder / (DUMP_FILE + ".partial")
            run(args + ["--snapshot", snapshot, "--file", str(partial), "--dbname", url], env, "pg_dump", password)
            os.replace(partial, dump)
            table_rows = []
            for ref in refs:
                key = ref.key if ref.key is not None else primary_key(conn, ref)
                rows, checksum = table_checksum(conn, TableRef(ref.schema, ref.table, key))
                table_rows.append({"schema": ref.schema, "table": ref.table, "key": key,
                                   "rows": rows, "checksum": checksum})
            ext = conn.execute(queries.select_vector_extension()).fetchone()
            conn.rollback()
        redis_info = backup_redis.snapshot(redis_url, folder) if redis_url else None
    except BackupError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    except (psycopg.Error, OSError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise BackupError(f"backup of source {source!r} failed: {str(e).strip().splitlines()[0]}") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    manifest = {
        "format": MANIFEST_FORMAT, "source": source, "scope": cfg.scope, "created_at": created.isoformat(),
        "database": redact(db.url), "server_version": server_ver, "server_major": server_major,
        "pg_dump_version": dump_version, "dump_file": DUMP_FILE, "dump_sha256": sha256(dump),
        "dump_bytes": dump.stat().st_size, "tables": table_rows,
        "schemas": sorted({t["schema"] for t in table_rows}),
        "extension": {"schema": ext[0], "version": ext[1]} if ext else None,
        "redis": None, "verified": False, "verified_at": None, "verify_error": None,
    }
    manifest["backup_commands"] = [
        shlex.join(args + ["--file", str(dump.resolve()), "--dbname", url])]
    manifest["restore_commands"] = restore_commands(str(pg_restore), url, dump, manifest)
    needed = ["PGPASSWORD (or ~/.pgpass)"] * bool(password) + ["REDISCLI_AUTH"] * bool(
        redis_url and backup_redis.has_password(redis_url))
    if needed:
        manifest["credentials"] = f"the commands carry no passwords: export {' and '.join(needed)} first"
    if redis_info:
        manifest["redis"] = redis_info
        manifest["backup_commands"].append(redis_info["backup_command"])
        manifest["restore_commands"] += redis_info["restore_commands"]
    manifest_path = folder / MANIFEST_FILE
    try:
        write_manifest(manifest_path, manifest)
    except OSError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise BackupError(f"could not write {manifest_path}: {e}") from None
    if verify:
        return verify_backup(db, manifest_path, cfg)
    return BackupReport.from_manifest(manifest, manifest_path)


def verify_backup(db: Database, manifest_path: Path, cfg: BackupConfig) -> BackupReport:
    """Check the files' sha256, restore into a scratch database, compare every table; load the
    Redis snapshot into a throwaway server. Marks the manifest verified only when all match."""
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    folder = manifest_path.parent
    try:
        dump = folder / manifest["dump_file"]
        if not dump.exists():
            raise BackupError(f"dump {dump} is missing")
        if sha256(dump) != manifest["dump_sha256"]:
            raise BackupError(f"dump {dump} does not match the sha256 in its manifest: it was changed or is corrupt")
        check = _restore_and_compare(db, cfg, dump, manifest)
        if manifest.get("redis"):
            check["redis"] = backup_redis.verify_snapshot(manifest["redis"], folder)
    except (BackupError, psycopg.Error, OSError, KeyError, TypeError, ValueError) as e:
        message = str(e).strip() if isinstance(e, BackupError) else f"{type(e).__name__}: {str(e).strip()}"
        manifest.update(verified=False, verified_at=None, verify_error=message)
        write_manifest(manifest_path, manifest)
        raise BackupError(f"backup {folder} did not verify: {message}") from None
    manifest.update(verified=True, verified_at=_now().isoformat(), verify_error=None, restore_check=check)
    write_manifest(manifest_path, manifest)
    return BackupReport.from_manifest(manifest, manifest_path)


def _prepare_scratch(scratch_url: str, manifest: dict) -> None:
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        for schema in manifest["schemas"]:
            conn.execute(queries.create_schema(schema))
        if manifest.get("extension"):
            ext_schema = manifest["extension"]["schema"]
            conn.execute(queries.create_schema(ext_schema))
            conn.execute(queries.create_vector_extension(ext_schema))


def _toc_without_triggers(pg_restore: Path, dump: Path, tmp: Path) -> Path:
    """The dump's table of contents minus triggers: a table-scope dump has the tables but not the
    functions their triggers call (change capture's lives in the project schema), and the check
    is of the data. The live database keeps its functions, so the printed restore keeps triggers."""
    toc = run([str(pg_restore), "--list", str(dump)], pg_env(None), "pg_restore --list", None)
    path = tmp / "restore.list"
    path.write_text("".join(line + "\n" for line in toc.splitlines() if " TRIGGER " not in line))
    return path


def _restore_and_compare(db: Database, cfg: BackupConfig, dump: Path, manifest: dict) -> dict:
    with _connect(db, autocommit=True) as admin:
        server_major, _ = server_version(admin)
        pg_restore, restore_version = pg_client(db, "pg_restore", cfg.pg_restore, server_major)
        scratch = f"ep_verify_{uuid.uuid4().hex[:16]}"
        try:
            # template0: nothing a site added to template1 can collide with the restored tables.
            admin.execute(queries.create_scratch_database(scratch))
        except psycopg.errors.InsufficientPrivilege:
            raise BackupError("this role may not CREATE DATABASE, which verification needs for its scratch "
                              "database: grant it CREATEDB or verify with a role that has it") from None
        try:
            scratch_url = url_with_database(db.url, scratch)
            url, password = split_password(scratch_url)
            args = [str(pg_restore), "--no-owner", "--single-transaction", "--exit-on-error"]
            with tempfile.TemporaryDirectory(prefix="ep-verify-") as tmp:
                if manifest.get("scope") != "database":
                    # pg_dump -t leaves out schemas, the extension and the functions triggers call.
                    _prepare_scratch(scratch_url, manifest)
                    args += ["--use-list", str(_toc_without_triggers(pg_restore, dump, Path(tmp)))]
                run(args + ["--dbname", url, str(dump)], pg_env(password), "pg_restore", password)
            with psycopg.connect(scratch_url, autocommit=True) as conn:
                for t in manifest["tables"]:
                    rows, checksum = table_checksum(conn, TableRef(t["schema"], t["table"], t["key"]))
                    if rows != t["rows"]:
                        raise BackupError(f"{t['schema']}.{t['table']}: {rows} rows after restore, "
                                          f"{t['rows']} when dumped")
                    if checksum != t["checksum"]:
                        raise BackupError(f"{t['schema']}.{t['table']}: checksum after restore differs from the one "
                                          "taken when dumped")
        finally:
            admin.execute(queries.drop_scratch_database(scratch))
    return {"pg_restore_version": restore_version, "tables": len(manifest["tables"]), "scratch_database": scratch}
