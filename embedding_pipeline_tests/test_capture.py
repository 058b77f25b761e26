"""Change capture on the real database with real MiniLM: writes made during a migration are never lost."""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid

import dagster as dg
import pytest
from psycopg import sql

from embedding_pipeline.cli import capture_commands
from embedding_pipeline.cli.common import run_command
from embedding_pipeline.config import CaptureConfig
from embedding_pipeline.db.queue import (
    ensure_capture_tables,
    lag_check,
    queue_stats,
    queue_stats_hook,
)
from embedding_pipeline.defs.embeddings.capture_sensor import build_capture
from embedding_pipeline.defs.resources import PipelineResource
from embedding_pipeline.embeddings.capture import (
    capture_status,
    consume,
    disable_capture,
    enable_capture,
    refresh_digests,
)
from embedding_pipeline.embeddings.coverage import space_counts
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.errors import ConfigError, DatabaseError
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline.spaces.source import inspect_source
from embedding_pipeline_tests.support.sources import TOPICS, make_documents

SPACE = "minilm-256"


@pytest.fixture
def env(configure, provider_cache, prepared_source):
    """(cfg, provider_for, make): documents built into minilm-256 only; make(n) creates and prepares n rows."""
    cfg = configure(source={"spaces": [SPACE]})

    def make(n):
        return prepared_source(["minilm", SPACE], n, cfg=cfg).ids

    return cfg, provider_cache.for_config(cfg), make


def _counts(db, cfg):
    with db.connect() as conn:
        return space_counts(conn, cfg, inspect_source(conn, "documents", cfg.source("documents")), SPACE)


def _stored(db, cfg) -> int:
    with db.connect() as conn:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(cfg.project_schema, space_table_name("documents", SPACE)))).fetchone()[0]


def _drain(db, cfg, provider_for, limit=1000) -> list[dict]:
    results = []
    while (r := consume(db, cfg, "documents", provider_for, limit=limit))["claimed"]:
        results.append(r)
    return results


def _queue(db, cfg) -> list[tuple]:
    with db.connect() as conn:
        return conn.execute(sql.SQL("SELECT source_id, op FROM {} ORDER BY id").format(
            sql.Identifier(cfg.project_schema, "change_queue"))).fetchall()


def _assert_converged(c, eligible):
    assert (c.eligible, c.covered, c.stale, c.orphans) == (eligible, eligible, 0, 0), c.to_json()


def test_writes_during_backfill_converge(db, env):
    """Edits, deletes, soft deletes, blanks and inserts committed while a backfill streams all end up embedded."""
    cfg, provider_for, make = env
    ids = make(200)
    with db.connect() as conn:
        assert enable_capture(conn, cfg, "documents")["mode"] == "trigger"
    provider = provider_for(SPACE)
    errors = []

    def backfill():
        try:
            reembed(db, cfg, "documents", SPACE, provider, batch_size=8, build_hnsw=False)
        except Exception as e:  # surfaced below
            errors.append(e)

    thread = threading.Thread(target=backfill)
    thread.start()
    deadline = time.monotonic() + 120
    while _stored(db, cfg) < 40:  # the backfill's snapshot is taken and its first rows are written
        assert time.monotonic() < deadline and not errors
        time.sleep(0.02)
    with db.connect(autocommit=True) as w:
        for i in ids[:10]:
            w.execute("UPDATE documents SET content = content || ' Edited.' WHERE id = %s", (i,))
        for i in ids[10:15]:
            w.execute("DELETE FROM documents WHERE id = %s", (i,))
        for i in ids[15:20]:
            w.execute("UPDATE documents SET deleted_at = now() WHERE id = %s", (i,))
        for i in ids[20:23]:
            w.execute("UPDATE documents SET content = '  ' WHERE id = %s", (i,))
        for j in range(10):
            w.execute("INSERT INTO documents (id, content) VALUES (%s, %s)", (f"new{j:03d}", TOPICS[j % 8] + " New."))
        overlapped = thread.is_alive()
    thread.join()
    assert not errors
    assert overlapped, "the writes must happen while the backfill runs"
    before = _counts(db, cfg)
    assert before.stale > 0 and before.orphans > 0 and before.missing > 0, before.to_json()
    results = _drain(db, cfg, provider_for, limit=20)
    assert sum(r["claimed"] for r in results) == 10 + 5 + 5 + 3 + 10
    _assert_converged(_counts(db, cfg), 200 - 5 - 5 - 3 + 10)
    with db.connect() as conn:
        assert queue_stats(conn, cfg.project_schema, "documents") == {"queue_depth": 0, "queue_lag_seconds": 0.0}


def test_trigger_queues_only_changes_that_matter(db, env):
    """Text, id, filter (soft delete) changes and deletes are queued; writes of other columns are not."""
    cfg, provider_for, make = env
    ids = make(8)
    with db.connect() as conn:
        enable_capture(conn, cfg, "documents")
    with db.connect(autocommit=True) as w:
        w.execute("UPDATE documents SET embedding = array_fill(0.1, ARRAY[384])::vector WHERE id = %s", (ids[0],))
        w.execute("UPDATE documents SET updated_at = now() + interval '1 s' WHERE id = %s", (ids[1],))
        w.execute("UPDATE documents SET deleted_at = now() WHERE id = %s", (ids[2],))
        w.execute("UPDATE documents SET deleted_at = NULL WHERE id = %s", (ids[2],))
        w.execute("UPDATE documents SET content = 'changed' WHERE id = %s", (ids[3],))
        w.execute("DELETE FROM documents WHERE id = %s", (ids[4],))
        w.execute("UPDATE documents SET id = 'renamed' WHERE id = %s", (ids[5],))
        w.execute("INSERT INTO documents (id, content) VALUES ('fresh', 'hello')")
        w.execute("UPDATE documents SET content = ' ' WHERE id = %s", (ids[6],))
    assert _queue(db, cfg) == [(ids[2], "U"), (ids[2], "U"), (ids[3], "U"), (ids[4], "D"), (ids[5], "D"),
                               ("renamed", "U"), ("fresh", "I"), (ids[6], "U")]
    # Each entry says what the row is now, and hashes eligible rows as the engine does, for every space.
    with db.connect() as conn:
        said = conn.execute(sql.SQL("SELECT eligible, digests FROM {} ORDER BY id").format(
            sql.Identifier(cfg.project_schema, "change_queue"))).fetchall()
        engine = [conn.execute(sql.SQL("SELECT encode({}, 'hex')").format(cfg.space(n).content_hash(sql.Literal(
            "changed")))).fetchone()[0] for n in cfg.spaces_for("documents")]
    assert [e for e, _ in said] == [False, True, True, False, False, True, True, False]
    assert [d is None for _, d in said] == [True, False, False, True, True, False, False, True]
    assert sorted(said[2][1].values()) == sorted(engine) and engine


def test_a_space_configured_after_enable_gets_its_digests_at_the_next_consume(db, configure, provider_cache,
                                                                               prepared_source, log_lines):
    """The trigger hashes for the spaces configured when it was installed; status names the others, and the
    next consume replaces the function so that later entries carry theirs too (a role that may not replace
    it is told who can, and goes on)."""
    before = configure(source={"spaces": []})
    after = configure(source={"spaces": [SPACE]})
    ids = prepared_source(["minilm", SPACE], 3, cfg=after).ids
    with db.connect() as conn:
        enable_capture(conn, before, "documents", mode="trigger")
        assert capture_status(conn, after, "documents")["digests_missing"] == [SPACE]
    logger, lines = log_lines
    role = f"ep_consumer_{uuid.uuid4().hex[:8]}"
    with db.connect(autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(after.project_schema),
                                                                      sql.Identifier(role)))
        try:
            with db.connect() as conn:
                src = inspect_source(conn, "documents", after.source("documents"))
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
                refresh_digests(conn, after, src, logger)
                conn.commit()
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert any(f"hashes none of {SPACE}" in line and "capture enable --source documents" in line for line in lines)
    provider_for = provider_cache.for_config(after)
    consume(db, after, "documents", provider_for)
    with db.connect() as conn:
        assert capture_status(conn, after, "documents")["digests_missing"] == []
        conn.execute("UPDATE documents SET content = 'new words' WHERE id = %s", (ids[0],))
        digests = conn.execute(sql.SQL("SELECT digests FROM {} ORDER BY id DESC LIMIT 1").format(
            sql.Identifier(after.project_schema, "change_queue"))).fetchone()[0]
    assert after.space(SPACE).fingerprint in digests


def test_two_consumers_never_share_entries(db, env):
    """Concurrent consumers claim disjoint entries that together are all of them, and the table converges."""
    cfg, provider_for, make = env
    make(60)
    with db.connect() as conn:
        enable_capture(conn, cfg, "documents")
    reembed(db, cfg, "documents", SPACE, provider_for(SPACE), build_hnsw=False)
    with db.connect(autocommit=True) as w:
        w.execute("UPDATE documents SET content = content || ' Second version.'")
    with db.connect() as conn:
        queued = {r[0] for r in conn.execute(sql.SQL("SELECT id FROM {}").format(
            sql.Identifier(cfg.project_schema, "change_queue"))).fetchall()}
    assert len(queued) == 60
    # One model instance per consumer: a fast tokenizer must not be shared between threads.
    own = {"a": lambda s: provider_for(s), "b": lambda s: provider_for(s, copy="#b")}
    own["b"](SPACE)
    done: dict[str, list[int]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)
    errors = []

    def worker(name):
        try:
            barrier.wait()
            while (r := consume(db, cfg, "documents", own[name], limit=15))["claimed"]:
                done[name].extend(r["entry_ids"])
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in done]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    a, b = set(done["a"]), set(done["b"])
    assert a and b and not (a & b)
    assert len(done["a"]) + len(done["b"]) == 60 and a | b == queued
    _assert_converged(_counts(db, cfg), 60)


def test_sensor_launches_the_incremental_job(db, env, config_path):
    """The sensor requests one run per changed source (never twice for the same work) and its job drains the queue."""
    cfg, provider_for, make = env
    ids = make(40)
    with db.connect() as conn:
        enable_capture(conn, cfg, "documents")
    reembed(db, cfg, "documents", SPACE, provider_for(SPACE), build_hnsw=False)
    with db.connect(autocommit=True) as w:
        w.execute("UPDATE documents SET content = content || ' Edited.' WHERE id = ANY(%s)", (ids[:5],))
        w.execute("UPDATE documents SET deleted_at = now() WHERE id = ANY(%s)", (ids[5:7],))
        w.execute("DELETE FROM documents WHERE id = %s", (ids[7],))
        w.execute("INSERT INTO documents (id, content) VALUES ('zz1', 'Fresh news about the weather.')")
    resource = PipelineResource(config_path=str(config_path))
    defs = dg.Definitions.merge(build_capture(cfg), dg.Definitions(resources={"pipeline": resource}))
    sensor = defs.resolve_sensor_def("capture_sensor")

    def tick_with(cursor=None):
        # A context manager: PipelineResource holds nested resources, which Dagster opens and closes.
        with dg.build_sensor_context(definitions=defs, resources={"pipeline": resource}, cursor=cursor) as context:
            return sensor.evaluate_tick(context)

    tick = tick_with()
    assert [r.partition_key for r in tick.run_requests] == ["documents"]
    request = tick.run_requests[0]
    again = tick_with(tick.cursor)
    assert again.run_requests == []
    result = defs.resolve_job_def("capture_consume").execute_in_process(partition_key=request.partition_key,
                                                                        tags=request.tags)
    assert result.success
    out = result.output_for_node("consume_changes")
    assert out["claimed"] == 9 and out["spaces"][SPACE]["deleted"] == 3
    _assert_converged(_counts(db, cfg), 40 - 3 + 1)
    idle = tick_with(tick.cursor)
    assert idle.run_requests == [] and json.loads(idle.cursor) == {}


def test_cursor_mode_without_trigger(db, env):
    """Without a trigger the updated_at cursor queues edits, inserts and soft deletes; hard deletes are swept."""
    cfg, provider_for, make = env
    ids = make(60)
    with db.connect() as conn:
        status = enable_capture(conn, cfg, "documents", mode="cursor")
    assert status["mode"] == "cursor" and not status["trigger_installed"] and not status["function_installed"]
    assert "hard deletes are found only by the orphan sweep" in status["warnings"][0]
    reembed(db, cfg, "documents", SPACE, provider_for(SPACE), build_hnsw=False)
    with db.connect(autocommit=True) as w:
        w.execute("UPDATE documents SET content = content || ' Edited.', updated_at = clock_timestamp() "
                  "WHERE id = ANY(%s)", (ids[:5],))
        w.execute("UPDATE documents SET deleted_at = now(), updated_at = clock_timestamp() WHERE id = ANY(%s)",
                  (ids[5:7],))
        w.execute("DELETE FROM documents WHERE id = %s", (ids[7],))
        w.execute("INSERT INTO documents (id, content) SELECT 'new' || g, 'Lisbon flights again ' || g "
                  "FROM generate_series(1, 3) g")
    assert _queue(db, cfg) == []
    first = consume(db, cfg, "documents", provider_for)
    assert first["polled"] == 10 and first["claimed"] == 10
    _assert_converged(_counts(db, cfg), 60 - 3 + 3)
    # The overlap window re-reads those rows, but they are up to date now: nothing is queued twice.
    again = consume(db, cfg, "documents", provider_for)
    assert again["polled"] == 0 and again["claimed"] == 0
    with db.connect() as conn:
        newest = conn.execute("SELECT max(updated_at) FROM documents").fetchone()[0]
        assert capture_status(conn, cfg, "documents")["high_water"] == newest
        assert "hard deletes are found only by the orphan sweep" in lag_check(conn, cfg, "documents").message


def test_state_table_of_an_earlier_install_is_upgraded(db, env):
    """A capture_state created before the cursor's safe point and reconcile, and a queue created before the
    trigger's digests, gain their columns in place."""
    cfg, _, make = env
    make(3)
    with db.connect(autocommit=True) as admin:
        ensure_capture_tables(admin, cfg.project_schema)
        admin.execute("ALTER TABLE embedding_pipeline.capture_state DROP COLUMN scan_from, DROP COLUMN reconciled_at")
        admin.execute("ALTER TABLE embedding_pipeline.change_queue DROP COLUMN eligible, DROP COLUMN digests")
    with db.connect() as conn:
        status = enable_capture(conn, cfg, "documents", mode="cursor")
        queue_cols = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'embedding_pipeline' AND table_name = 'change_queue'")}
    assert status["scan_from"] is not None and status["reconciled_at"] is not None
    assert {"eligible", "digests"} <= queue_cols


@pytest.fixture
def cursor_env(configure, provider_cache, prepared_source, db):
    """(cfg(**capture), provider_for, ids): 30 documents embedded into minilm-256, capture in cursor mode.

    A 1 s overlap and no skew margin: what the cursor catches here it catches by its safe point
    and its reconcile, not by a wide window.
    """
    def cfg_with(**capture):
        knobs = {"overlap_seconds": 1.0, "clock_skew_seconds": 0.0, "reconcile_every_seconds": 3600.0, **capture}
        return configure(source={"spaces": [SPACE]}, capture=CaptureConfig(**knobs))

    cfg = cfg_with()
    ids = prepared_source(["minilm", SPACE], 30, cfg=cfg).ids
    provider_for = provider_cache.for_config(cfg)
    with db.connect() as conn:
        enable_capture(conn, cfg, "documents", mode="cursor")
    reembed(db, cfg, "documents", SPACE, provider_for(SPACE), build_hnsw=False)
    return cfg_with, provider_for, ids


def test_cursor_catches_a_commit_older_than_its_mark(db, cursor_env):
    """A transaction open during a poll commits after it, its updated_at older than the mark minus the
    overlap: the poll's safe point (oldest xact_start) makes the next poll read back far enough."""
    cfg_with, provider_for, ids = cursor_env
    cfg = cfg_with()
    slow = db.connect()
    try:
        # updated_at = now(): the transaction's start, as an application stamping in the database does.
        slow.execute("UPDATE documents SET content = content || ' Late edit.', updated_at = now() WHERE id = %s",
                     (ids[0],))
        time.sleep(1.5)
        with db.connect(autocommit=True) as w:
            w.execute("UPDATE documents SET content = content || ' Quick edit.', updated_at = clock_timestamp() "
                      "WHERE id = %s", (ids[1],))
        first = consume(db, cfg, "documents", provider_for)
        assert (first["polled"], first["claimed"], first["reconciled"]) == (1, 1, None)
        slow.commit()
    finally:
        slow.close()
    with db.connect() as conn:
        late, mark = conn.execute("SELECT d.updated_at, s.high_water FROM documents d, embedding_pipeline.capture_state s "
                                  "WHERE d.id = %s AND s.source = 'documents'", (ids[0],)).fetchone()
    assert (mark - late).total_seconds() > cfg.capture.overlap_seconds  # the configured overlap alone misses it
    assert _counts(db, cfg).stale == 1
    second = consume(db, cfg, "documents", provider_for)
    assert (second["polled"], second["claimed"], second["reconciled"]) == (1, 1, None)
    _assert_converged(_counts(db, cfg), 30)


def test_cursor_reconcile_finds_skewed_clocks_and_hard_deletes(db, cursor_env):
    """Writes stamped 5 minutes in the past (a client clock behind) and a hard delete are past any
    cursor: the periodic content-hash reconcile queues the first and sweeps the second."""
    cfg_with, provider_for, ids = cursor_env
    cfg = cfg_with()
    with db.connect(autocommit=True) as w:
        w.execute("UPDATE documents SET content = content || ' Skewed edit.', "
                  "updated_at = clock_timestamp() - interval '5 minutes' WHERE id = ANY(%s)", (ids[:2],))
        w.execute("INSERT INTO documents (id, content, updated_at) "
                  "VALUES ('skewed-new', 'Porto trains at dawn', clock_timestamp() - interval '5 minutes')")
        w.execute("DELETE FROM documents WHERE id = %s", (ids[2],))
    quiet = consume(db, cfg, "documents", provider_for)
    assert (quiet["polled"], quiet["claimed"], quiet["reconciled"]) == (0, 0, None)
    missed = _counts(db, cfg)
    assert (missed.eligible, missed.covered, missed.stale, missed.orphans) == (30, 29, 2, 1), missed.to_json()
    due = cfg_with(reconcile_every_seconds=0.0)
    caught = consume(db, due, "documents", provider_for)
    assert caught["reconciled"] == {"queued": 3, "orphans_deleted": 1, "skipped_spaces": []}
    assert caught["claimed"] == 3
    _assert_converged(_counts(db, cfg), 30)
    with db.connect() as conn:
        assert capture_status(conn, cfg, "documents")["reconciled_at"] is not None
    again = consume(db, due, "documents", provider_for)
    assert again["reconciled"]["queued"] == 0 and again["claimed"] == 0


def test_cursor_is_refused_where_it_cannot_be_complete(db, env, configure):
    """No updated_at column (Honcho's documents), one that is not a timestamp, or NULLs in it: refused,
    naming the trigger; nothing is left half-enabled."""
    cfg, _, make = env
    make(3)
    cases = [({"updated_at_column": None}, "updated_at_column is not set"),
             ({"updated_at_column": "content"}, "is text, not a timestamp")]
    for change, why in cases:
        bad = configure(source={"spaces": [SPACE], **change})
        with db.connect() as conn, pytest.raises(ConfigError, match=why) as err:
            enable_capture(conn, bad, "documents", mode="cursor")
        assert "--mode trigger" in str(err.value)
    with db.connect(autocommit=True) as w:
        w.execute("ALTER TABLE documents ALTER COLUMN updated_at DROP NOT NULL")
        w.execute("UPDATE documents SET updated_at = NULL WHERE id = (SELECT min(id) FROM documents)")
    with db.connect() as conn:
        with pytest.raises(ConfigError, match="1 row\\(s\\) have updated_at NULL"):
            enable_capture(conn, cfg, "documents", mode="cursor")
        conn.rollback()
        assert capture_status(conn, cfg, "documents")["enabled"] is False


def test_auto_mode_falls_back_to_cursor_without_privilege(db, env):
    """A role that may not create triggers gets cursor mode from 'auto', a clear error from 'trigger', no leftovers."""
    cfg, provider_for, make = env
    make(5)
    role = f"ep_reader_{uuid.uuid4().hex[:8]}"
    s = sql.Identifier(cfg.project_schema)
    with db.connect(autocommit=True) as admin:
        ensure_capture_tables(admin, cfg.project_schema)
        admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        try:
            for stmt in ("GRANT USAGE, CREATE ON SCHEMA {s} TO {r}", "GRANT ALL ON ALL TABLES IN SCHEMA {s} TO {r}",
                         "GRANT ALL ON ALL SEQUENCES IN SCHEMA {s} TO {r}", "GRANT SELECT ON documents TO {r}"):
                admin.execute(sql.SQL(stmt).format(s=s, r=sql.Identifier(role)))
            with db.connect() as conn:
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
                conn.commit()
                with pytest.raises(DatabaseError, match="may not create a trigger on public.documents"):
                    enable_capture(conn, cfg, "documents", mode="trigger")
                conn.rollback()
                status = enable_capture(conn, cfg, "documents", mode="auto")
            assert status["mode"] == "cursor" and status["high_water"] is not None
            assert not status["trigger_installed"] and not status["function_installed"]
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_quoted_identifiers_and_clean_disable(db, config):
    """Names with quotes and spaces work end to end, and disable leaves no trigger or function behind."""
    src = config.sources["documents"].model_copy(update={
        "schema_": 'My "Src"', "table": "doc table", "id_column": "the id", "text_column": 'body "text"'})
    cfg = config.model_copy(update={"project_schema": 'ep "proj" x', "sources": {"documents": src}})
    with db.connect() as conn:
        ids = make_documents(conn, 6, schema='My "Src"', table="doc table", id_column="the id",
                             text_column='body "text"')
        status = enable_capture(conn, cfg, "documents")
        assert status["mode"] == "trigger" and status["trigger_installed"] and status["function_installed"]
    tbl = sql.Identifier('My "Src"', "doc table")
    with db.connect(autocommit=True) as w:
        w.execute(sql.SQL('UPDATE {} SET {} = %s WHERE {} = %s').format(
            tbl, sql.Identifier('body "text"'), sql.Identifier("the id")), ("new text", ids[0]))
        w.execute(sql.SQL("UPDATE {} SET deleted_at = now() WHERE {} = %s").format(tbl, sql.Identifier("the id")),
                  (ids[1],))
        w.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(tbl, sql.Identifier("the id")), (ids[2],))
    assert _queue(db, cfg) == [(ids[0], "U"), (ids[1], "U"), (ids[2], "D")]
    with db.connect() as conn:
        gone = disable_capture(conn, cfg, "documents")
        assert gone["disabled"] and gone["queue_depth"] == 3
        triggers = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal",
                                (tbl.as_string(conn),)).fetchone()[0]
        functions = conn.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                                 "WHERE n.nspname = %s", ('ep "proj" x',)).fetchone()[0]
        assert (triggers, functions) == (0, 0)
        assert not capture_status(conn, cfg, "documents")["enabled"]
        conn.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(tbl, sql.Identifier("the id")), (ids[3],))
        conn.commit()
    assert len(_queue(db, cfg)) == 3


def test_cli_enable_status_disable(db, config_path, capsys):
    """`capture enable|status|disable --json` report the same state the database holds."""
    with db.connect() as conn:
        make_documents(conn, 3)
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    capture_commands.register(parser.add_subparsers(dest="command"))

    def run(*argv):
        rc = run_command(parser.parse_args(["capture", *argv, "--json"]))
        return rc, json.loads(capsys.readouterr().out)

    rc, enabled = run("enable", "--source", "documents")
    assert rc == 0 and enabled["mode"] == "trigger" and enabled["trigger_installed"]
    with db.connect(autocommit=True) as w:
        w.execute("UPDATE documents SET content = 'x' WHERE id = 'doc00000'")
    rc, status = run("status", "--source", "documents")
    assert rc == 0 and status[0]["queue_depth"] == 1 and status[0]["queue_lag_seconds"] >= 0
    rc, disabled = run("disable", "--source", "documents")
    assert rc == 0 and disabled["disabled"] and disabled["queue_depth"] == 1
    assert run_command(parser.parse_args(["capture", "enable"])) == 2


def test_queue_lag_is_measured_and_checked(db, configure):
    """Depth and the oldest entry's age reach the drift stats; a lag past max_queue_lag_seconds fails the check."""
    cfg = configure(source={"spaces": [SPACE]})
    with db.connect() as conn:
        make_documents(conn, 4)
        assert queue_stats_hook(conn, cfg, "documents") is None  # no capture: the drift check passes
        enable_capture(conn, cfg, "documents")
        conn.execute("UPDATE documents SET content = 'edited' WHERE id IN ('doc00000', 'doc00001')")
        conn.execute(sql.SQL("UPDATE {} SET at = clock_timestamp() - interval '2 hours'").format(
            sql.Identifier(cfg.project_schema, "change_queue")))
        conn.commit()
        stats = queue_stats_hook(conn, cfg, "documents")
        check = lag_check(conn, cfg, "documents")
    assert stats["queue_depth"] == 2 and 7190 < stats["queue_lag_seconds"] < 7300
    assert not check.passed and check.max_lag_seconds == cfg.drift.max_queue_lag_seconds
    assert "capture consume --source documents" in check.message
