"""Backup-before, verified by a restore: real pg_dump/pg_restore on the embedded server, real redis-server."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from embedding_pipeline.backup.catalog import (
    _created,
    apply_retention,
    check_backup_fresh,
    latest_verified,
    list_backups,
    read_manifest,
    write_manifest,
)
from embedding_pipeline.backup.postgres import TableRef, table_checksum
from embedding_pipeline.backup.redis import (
    _cli_args,
    _parse,
    has_password,
    redact,
)
from embedding_pipeline.backup.run import backup_root, take_backup, verify_backup
from embedding_pipeline.config import BackupConfig
from embedding_pipeline.db.connection import Database
from embedding_pipeline.errors import BackupError
from embedding_pipeline_tests.support.net import free_port
from embedding_pipeline_tests.support.redis_server import running_redis

ODD = 'Odd "Quoted" Table'
SOURCE = "documents"
REDIS_PASSWORD = "r3dis-pa55"
FIX = f"embedding-pipeline backup --source {SOURCE}"


@pytest.fixture
def tables(db: Database) -> list[TableRef]:
    with db.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE public.documents (id text PRIMARY KEY, content text NOT NULL, "
                     "embedding vector(3), updated_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("CREATE SCHEMA embedding_pipeline")
        conn.execute("CREATE TABLE embedding_pipeline.chunks (doc_id text, chunk int, body text, "
                     "embedding vector(3), PRIMARY KEY (doc_id, chunk))")
        conn.execute(sql.SQL('CREATE TABLE public.{} ("Mixed Key" int PRIMARY KEY, note text)').format(
            sql.Identifier(ODD)))
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO public.documents (id, content, embedding) VALUES (%s, %s, %s::vector)",
                            [(f"doc_{i:03d}", f"Document {i} – naïve café", f"[{i},{i / 3},{-i}]")
                             for i in range(50)])
            cur.executemany("INSERT INTO embedding_pipeline.chunks VALUES (%s, %s, %s, %s::vector)",
                            [(f"doc_{i % 50:03d}", i, f"chunk {i}", "[0.5,0.25,1]") for i in range(100)])
            cur.executemany(sql.SQL("INSERT INTO public.{} VALUES (%s, %s)").format(sql.Identifier(ODD)),
                            [(i, None if i == 2 else f"note\t{i}\n") for i in range(5)])
    return [TableRef("public", "documents"), TableRef("embedding_pipeline", "chunks"), TableRef("public", ODD)]


@pytest.fixture
def cfg(tmp_path: Path) -> BackupConfig:
    return BackupConfig(directory=str(tmp_path / "backups"), keep=2)


@pytest.fixture
def redis_url(tmp_path: Path):
    """A live redis-server on a free loopback port, with a password, stopped at the end."""
    with running_redis(tmp_path / "redis-live", password=REDIS_PASSWORD) as url:
        yield url


def _scratch_databases(db: Database) -> list[str]:
    with db.connect(autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'ep_verify_%'")]


def _live_checksums(db: Database, tables: list[TableRef]) -> dict[str, tuple[int, str]]:
    with db.connect() as conn:
        return {t.qualified: table_checksum(conn, t) for t in tables}


def test_round_trip_verified_and_printed_restore_works(db, tables, cfg):
    """The core promise: a verified backup whose printed restore commands really bring the data back."""
    report = take_backup(db, source=SOURCE, tables=tables, cfg=cfg)
    out = report.to_json()
    assert out["verified"] is True and out["verified_at"]
    live = _live_checksums(db, tables)
    assert {f"{t['schema']}.{t['table']}": (t["rows"], t["checksum"]) for t in out["tables"]} == live
    assert [t["rows"] for t in out["tables"]] == [50, 100, 5]
    assert out["pg_dump_version"].split(")")[-1].strip().split(".")[0] >= out["server_version"].split(".")[0]
    folder = Path(out["path"])
    assert folder.parent == backup_root(db, cfg) / SOURCE
    assert sorted(p.name for p in folder.iterdir()) == ["dump.pgc", "manifest.json"]
    on_disk = json.loads(Path(out["manifest"]).read_text())
    assert on_disk["verified"] is True and on_disk["dump_sha256"] == out["dump_sha256"]
    assert on_disk["restore_check"]["tables"] == 3
    assert _scratch_databases(db) == []
    assert any("pg_dump" in c and "--format=custom" in c for c in out["backup_commands"])
    assert out["redis"] is None

    # Lose the data, then restore it with exactly the commands the report printed.
    with db.connect(autocommit=True) as conn:
        conn.execute("DROP TABLE public.documents")
        conn.execute("DELETE FROM embedding_pipeline.chunks WHERE chunk > 10")
        conn.execute(sql.SQL("DROP TABLE public.{}").format(sql.Identifier(ODD)))
    for command in out["restore_commands"]:
        done = subprocess.run(command, shell=True, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert _live_checksums(db, tables) == live


def test_tampered_dump_is_detected_before_restoring(db, tables, cfg):
    """A dump changed on disk must never be trusted, even if it was verified before."""
    report = take_backup(db, source=SOURCE, tables=tables, cfg=cfg)
    dump = report.path / "dump.pgc"
    data = bytearray(dump.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    dump.write_bytes(bytes(data))
    with pytest.raises(BackupError, match="sha256"):
        verify_backup(db, report.manifest, cfg)
    manifest = read_manifest(report.manifest)
    assert manifest["verified"] is False and "sha256" in manifest["verify_error"]
    assert latest_verified(backup_root(db, cfg), SOURCE) is None


def test_restored_checksum_mismatch_fails_verification(db, tables, cfg):
    """A dump swapped together with its sha256 is still caught: the restored rows disagree with the manifest."""
    first = take_backup(db, source=SOURCE, tables=tables, cfg=cfg, verify=False)
    with db.connect(autocommit=True) as conn:
        conn.execute("UPDATE public.documents SET content = 'changed' WHERE id = 'doc_007'")
    second = take_backup(db, source=SOURCE, tables=tables, cfg=cfg, verify=False)
    shutil.copyfile(second.path / "dump.pgc", first.path / "dump.pgc")
    forged = read_manifest(first.manifest)
    forged["dump_sha256"] = second.dump_sha256
    write_manifest(first.manifest, forged)

    with pytest.raises(BackupError, match="public.documents: checksum"):
        verify_backup(db, first.manifest, cfg)
    assert read_manifest(first.manifest)["verified"] is False
    assert _scratch_databases(db) == []
    assert verify_backup(db, second.manifest, cfg).verified is True  # the untouched one still verifies


def test_check_backup_fresh(db, tables, cfg):
    """Gates refuse to run without a fresh verified backup holding their tables, and say how to fix it."""
    root = backup_root(db, cfg)
    ok, reason = check_backup_fresh(root, SOURCE, 24)
    assert not ok and "no verified backup" in reason and FIX in reason

    take_backup(db, source=SOURCE, tables=tables, cfg=cfg, verify=False)
    ok, reason = check_backup_fresh(root, SOURCE, 24)
    assert not ok and "1 unverified" in reason and FIX in reason

    report = take_backup(db, source=SOURCE, tables=tables, cfg=cfg)
    ok, reason = check_backup_fresh(root, SOURCE, 24, required_tables=["public.documents", f"public.{ODD}"])
    assert ok, reason
    assert str(report.path) in reason

    later = _created(read_manifest(report.manifest)) + timedelta(hours=30)
    ok, reason = check_backup_fresh(root, SOURCE, 24, now=later)
    assert not ok and f"'{SOURCE}'" in reason and "30.0 h old" in reason and FIX in reason

    ok, reason = check_backup_fresh(root, SOURCE, 24, required_tables=["public.documents", "public.message_embeddings"])
    assert not ok and "public.message_embeddings" in reason and FIX in reason


def test_retention_never_removes_newest_verified(db, tables, cfg):
    """Pruning old backups must not leave the source without its last restorable copy."""
    root = backup_root(db, cfg)
    oldest = take_backup(db, source=SOURCE, tables=tables, cfg=cfg)
    middle = take_backup(db, source=SOURCE, tables=tables, cfg=cfg, verify=False)
    newest = take_backup(db, source=SOURCE, tables=tables, cfg=cfg, verify=False)
    in_progress = root / SOURCE / "99991231T000000Z"
    in_progress.mkdir()  # a backup still being written has no manifest yet

    assert apply_retention(root, SOURCE, keep=1) == [middle.path]
    assert oldest.path.exists() and newest.path.exists() and not middle.path.exists()
    assert in_progress.exists()
    assert latest_verified(root, SOURCE)["path"] == str(oldest.path)

    verify_backup(db, newest.manifest, cfg)
    assert apply_retention(root, SOURCE, keep=1) == [oldest.path]
    assert [m["path"] for m in list_backups(root, SOURCE)] == [str(newest.path)]
    assert sorted(p.name for p in (root / SOURCE).iterdir()) == sorted([newest.path.name, in_progress.name])


def test_pg_dump_failure_leaves_nothing(db, tables, cfg):
    """A failed dump (here: a table that does not exist) must raise and leave no backup behind."""
    with pytest.raises(BackupError, match=r"public.nope do not exist; nothing was dumped"):
        take_backup(db, source=SOURCE, tables=tables + [TableRef("public", "nope")], cfg=cfg)
    root = backup_root(db, cfg)
    assert list_backups(root, SOURCE) == []
    assert list((root / SOURCE).iterdir()) == []


def test_old_or_missing_pg_dump_is_refused(db, tables, cfg, tmp_path):
    """A pg_dump older than the server writes dumps that may not restore: refuse before dumping."""
    fake = tmp_path / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.3'\n")
    fake.chmod(0o755)
    old = cfg.model_copy(update={"pg_dump": str(fake)})
    with pytest.raises(BackupError, match=r"older than the server's major version"):
        take_backup(db, source=SOURCE, tables=tables, cfg=old)
    missing = cfg.model_copy(update={"pg_dump": str(tmp_path / "absent" / "pg_dump")})
    with pytest.raises(BackupError, match="not found"):
        take_backup(db, source=SOURCE, tables=tables, cfg=missing)
    assert not (backup_root(db, cfg) / SOURCE).exists()


def test_unwritable_backup_directory(db, tables, tmp_path):
    """A backup directory we cannot create or write into is a clear error, not a traceback."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cfg = BackupConfig(directory=str(blocker / "backups"))
    with pytest.raises(BackupError, match="not writable"):
        take_backup(db, source=SOURCE, tables=tables, cfg=cfg)


def test_password_stays_out_of_commands_and_manifest(db, tables, cfg):
    """Reports and manifests get pasted into tickets: the database password must not be in them."""
    params = psycopg.conninfo.conninfo_to_dict(db.url)
    params["password"] = "pg-s3cret-pw"
    with_password = Database(url=psycopg.conninfo.make_conninfo(**params), embedded=False, home=db.home)
    report = take_backup(with_password, source=SOURCE, tables=tables, cfg=cfg)
    assert report.verified
    assert "pg-s3cret-pw" not in json.dumps(report.to_json())
    assert "pg-s3cret-pw" not in report.manifest.read_text()


def test_redis_round_trip(db, tables, cfg, redis_url):
    """The Redis snapshot restores into a throwaway server with the same keys and values as the live one."""
    with redis.Redis.from_url(redis_url) as live:
        live.set("plain", "value")
        live.set(b"bin\x00key", bytes(range(256)))
        live.hset("hash", mapping={"a": "1", "b": "2"})
        live.rpush("queue", "j1", "j2", "j3")
        live.sadd("set", "x", "y")
        live.zadd("zset", {"m1": 1.5, "m2": 2})
        live.set("ttl-key", "v", ex=3600)
        dbsize = live.dbsize()
    with redis.Redis.from_url(redis_url.removesuffix("/0") + "/1") as other:
        other.set("other-db", "v")
    report = take_backup(db, source=SOURCE, tables=tables, cfg=cfg, redis_url=redis_url)
    out = report.to_json()
    assert out["verified"] is True
    snap = out["redis"]
    assert snap["keyspace"] == {"db0": {"keys": dbsize, "expires": 1}, "db1": {"keys": 1, "expires": 0}}
    assert len(snap["sample"]) == dbsize - 1  # every key without a TTL
    assert {e["type"] for e in snap["sample"]} == {"string", "hash", "list", "set", "zset"}
    # Digests are over the raw RESP2 replies, so these values, which the hand-written RESP client this
    # replaced recorded, stay what redis-py produces: backups taken before still re-verify.
    assert {base64.b64decode(e["key_b64"]): e["digest"] for e in snap["sample"]} == {
        b"plain": "5eaceea958ee226b788a6dbdaa52cd81624dbb6aac1fc80d7a11ab5c77c9df90",
        b"bin\x00key": "7cf575eb783b5c56427f6d333faca8e8afdb6cd32694a9df2b0e9e39730648c4",
        b"hash": "0385fe7e0ff6477eb5dee12b784784852f909b53839a26287af3b3f227a98bac",
        b"queue": "36b1ee372690f820c64cb1e7f62e7991235165f35626c8938aa27819021c6647",
        b"set": "6ef8d9da400f624424fad90d34a9a65166d00c5656bade156c264a8007981152",
        b"zset": "863104a37ba1244a47876c7ba799c86afeac2b405990f7c43d5b8f9d1741c4a4",
    }
    assert json.loads(report.manifest.read_text())["restore_check"]["redis"] == {"keys": dbsize + 1,
                                                                                "sampled": dbsize - 1}
    assert (report.path / "dump.rdb").stat().st_size == snap["bytes"]
    assert any("--rdb" in c and str(report.path / "dump.rdb") in c for c in out["backup_commands"])
    assert any(c.startswith("cp ") and "dump.rdb" in c for c in out["restore_commands"])
    assert REDIS_PASSWORD not in json.dumps(out)
    assert sorted(p.name for p in report.path.iterdir()) == ["dump.pgc", "dump.rdb", "manifest.json"]

    # The comparison is real: a sample digest that disagrees with the restored value fails verification.
    forged = read_manifest(report.manifest)
    forged["redis"]["sample"][0]["digest"] = "0" * 64
    write_manifest(report.manifest, forged)
    with pytest.raises(BackupError, match="restored value differs"):
        verify_backup(db, report.manifest, cfg)
    assert read_manifest(report.manifest)["verified"] is False

    # A snapshot redis-server cannot load (truncated, sha256 forged to match) fails too, and leaves no server behind.
    rdb = report.path / "dump.rdb"
    rdb.write_bytes(rdb.read_bytes()[: snap["bytes"] // 2])
    forged["redis"]["sha256"] = hashlib.sha256(rdb.read_bytes()).hexdigest()
    write_manifest(report.manifest, forged)
    with pytest.raises(BackupError, match="could not load the snapshot"):
        verify_backup(db, report.manifest, cfg)
    assert not list(report.path.glob(".redis-verify-*"))


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:6379/0", r"unsupported scheme 'http': use redis:// or rediss://"),
    ("redis://127.0.0.1:6379/abc", r"the database must be a number, got 'abc'"),
    ("redis://127.0.0.1:notaport/0", r"invalid Redis URL"),
])
def test_redis_bad_url_is_a_backup_error(url, message):
    """A malformed Redis URL is refused as a BackupError that says what to write instead."""
    with pytest.raises(BackupError, match=message):
        redact(url)


def test_redis_url_redaction_and_redis_cli_arguments():
    """What is printed and stored names the server without credentials; ACL user and TLS reach redis-cli."""
    url = "rediss://backup%40ops:s3cret%2Fpw@redis.internal:6380/2"
    assert redact(url) == "rediss://redis.internal:6380/2" and has_password(url)
    assert not has_password("redis://127.0.0.1/0") and redact("redis://[::1]/0") == "redis://[::1]:6379/0"
    args = _cli_args(Path("redis-cli"), _parse(url))
    assert args == ["redis-cli", "-u", "rediss://redis.internal:6380/2", "--user", "backup@ops", "--tls"]
    assert "--user" not in _cli_args(Path("redis-cli"), _parse("redis://default:pw@h/0"))


def test_redis_unreachable(db, tables, cfg):
    """A configured Redis that is down fails the backup up front; nothing is left marked verified."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(BackupError, match="unreachable"):
        take_backup(db, source=SOURCE, tables=tables, cfg=cfg, redis_url=url)
    root = backup_root(db, cfg)
    assert latest_verified(root, SOURCE) is None
    assert list_backups(root, SOURCE) == []


# ---------------------------------------------------------------- Honcho-like foreign keys and capture

def _fk_schema(conn) -> None:
    """A source whose rows reference other tables (as Honcho's message_embeddings -> messages -> workspaces)."""
    conn.execute("CREATE TABLE public.workspaces (name text PRIMARY KEY)")
    conn.execute("CREATE TABLE public.messages (public_id text PRIMARY KEY, "
                 "workspace_name text NOT NULL REFERENCES public.workspaces(name))")
    conn.execute("CREATE TABLE public.message_embeddings (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
                 "content text NOT NULL, embedding vector(384), "
                 "message_id text NOT NULL REFERENCES public.messages(public_id) ON DELETE CASCADE, "
                 "workspace_name text NOT NULL REFERENCES public.workspaces(name))")
    conn.execute("INSERT INTO public.workspaces VALUES ('w1'), ('w2')")
    conn.execute("INSERT INTO public.messages SELECT 'm' || i, CASE WHEN i % 2 = 0 THEN 'w1' ELSE 'w2' END "
                 "FROM generate_series(1, 20) i")
    conn.execute("INSERT INTO public.message_embeddings (content, message_id, workspace_name) "
                 "SELECT 'message number ' || i, 'm' || i, CASE WHEN i % 2 = 0 THEN 'w1' ELSE 'w2' END "
                 "FROM generate_series(1, 20) i")


@pytest.mark.parametrize("scope", ["database", "tables"])
def test_backup_verifies_on_foreign_keys_and_a_capture_trigger(db, config, scope):
    """Tables with foreign keys to tables outside the source, and our capture trigger on the source:
    the whole-database default and the table scope (with its foreign-key closure) both restore."""
    from embedding_pipeline.backup.targets import backup_source
    from embedding_pipeline.db.schema import ensure_schema
    from embedding_pipeline.embeddings.capture import enable_capture
    from embedding_pipeline.embeddings.setup import prepare_source
    from embedding_pipeline.providers.cache import default_provider_for

    with db.connect(autocommit=True) as conn:
        _fk_schema(conn)
    src = config.sources["message_embeddings"].model_copy(update={"spaces": ["minilm-256"]})
    cfg = config.model_copy(update={"sources": {"message_embeddings": src},
                                    "backup": config.backup.model_copy(update={"scope": scope})})
    with db.connect() as conn:
        ensure_schema(conn, cfg.project_schema)
        prepare_source(conn, cfg, "message_embeddings", default_provider_for(cfg))
        enable_capture(conn, cfg, "message_embeddings", mode="trigger")
        conn.commit()
    report, _ = backup_source(db, cfg, "message_embeddings")
    assert report.verified, report.verify_error
    dumped = {f"{t['schema']}.{t['table']}" for t in report.tables}
    assert {"public.message_embeddings", "embedding_pipeline.message_embeddings__minilm-256"} <= dumped
    if scope == "tables":  # the closure: what the foreign keys reach is dumped too
        assert {"public.messages", "public.workspaces"} <= dumped
    manifest = read_manifest(report.manifest)
    assert manifest["scope"] == scope and manifest["restore_check"]["tables"] == len(report.tables)
