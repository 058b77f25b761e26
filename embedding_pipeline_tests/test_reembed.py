"""The re-embed engine on the real database with real models: complete, resumable, never mixed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psycopg
import pytest
from psycopg import sql

from embedding_pipeline.embeddings.reembed import RunInProgress, reembed
from embedding_pipeline.errors import ProviderError
from embedding_pipeline.providers import build_provider
from embedding_pipeline.spaces.canaries import CANARY_TEXTS
from embedding_pipeline.spaces.model import space_table_name

SPACE = "minilm-256"


@pytest.fixture
def setup(prepared_source):
    """(cfg, provider_for, ids): 80 documents, minilm and minilm-256 registered, nothing embedded."""
    return prepared_source(["minilm", SPACE], 80)


def _table(cfg):
    return sql.Identifier(cfg.project_schema, space_table_name("documents", SPACE))


def test_complete_partition_run(db, setup):
    """A first run embeds every eligible row, skips blanks, builds the index; a rerun does nothing."""
    cfg, provider_for, ids = setup
    with db.connect() as conn:
        conn.execute("UPDATE documents SET content = '   ' WHERE id = %s", (ids[0],))
        conn.execute("UPDATE documents SET content = NULL WHERE id = %s", (ids[1],))
        conn.execute("UPDATE documents SET deleted_at = now() WHERE id = %s", (ids[2],))
        conn.commit()
    stats = reembed(db, cfg, "documents", SPACE, provider_for(SPACE), batch_size=16)
    assert stats.embedded == 77 and stats.stored == 77 and stats.coverage == 1.0
    assert stats.skipped == {"blank": 1, "null": 1}
    assert stats.index_built
    again = reembed(db, cfg, "documents", SPACE, provider_for(SPACE))
    assert again.embedded == 0 and again.deleted == 0 and again.stored == 77
    with db.connect() as conn:
        versions = conn.execute(sql.SQL("SELECT DISTINCT model_version FROM {}").format(_table(cfg))).fetchall()
        dims = conn.execute(sql.SQL("SELECT vector_dims(embedding) FROM {} LIMIT 1").format(_table(cfg))).fetchone()
    assert versions == [(cfg.space(SPACE).model_version,)]
    assert dims == (256,)


def test_edits_and_deletes_are_followed(db, setup):
    """Edited rows are re-embedded, soft-deleted and deleted rows lose their vectors, others are untouched."""
    cfg, provider_for, ids = setup
    reembed(db, cfg, "documents", SPACE, provider_for(SPACE))
    with db.connect() as conn:
        before = dict(conn.execute(sql.SQL("SELECT source_id, embedded_at FROM {}").format(_table(cfg))).fetchall())
        conn.execute("UPDATE documents SET content = 'A completely new text about volcanoes.' WHERE id = %s", (ids[5],))
        conn.execute("UPDATE documents SET deleted_at = now() WHERE id = %s", (ids[6],))
        conn.execute("DELETE FROM documents WHERE id = %s", (ids[7],))
        conn.commit()
    stats = reembed(db, cfg, "documents", SPACE, provider_for(SPACE))
    assert stats.embedded == 1 and stats.deleted == 2 and stats.coverage == 1.0
    with db.connect() as conn:
        after = dict(conn.execute(sql.SQL("SELECT source_id, embedded_at FROM {}").format(_table(cfg))).fetchall())
    assert set(after) == set(before) - {ids[6], ids[7]}
    assert after[ids[5]] > before[ids[5]]
    assert all(after[i] == before[i] for i in after if i != ids[5])


def test_rows_changed_between_read_and_write_leave_no_orphan_and_no_wrong_vector(db, setup):
    """The writer copies rows the reader saw without a vector straight into the space table. Rows that
    change after the read and before the batch commits: soft-deleted or blanked ones (new and stale alike)
    are pruned in the batch's transaction; one given a vector meanwhile by a writer that bypassed the run
    lock makes the direct COPY hit the primary key, and the batch is redone replacing it. Every stored
    vector is then the model's vector of the text its hash names, in one version."""
    cfg, provider_for, ids = setup
    provider = provider_for(SPACE)
    table, mv = _table(cfg), cfg.space(SPACE).model_version
    reembed(db, cfg, "documents", SPACE, provider, build_hnsw=False)
    with db.connect() as conn:  # half the rows stale (edited), half new (vector gone)
        conn.execute("UPDATE documents SET content = content || ' (edited)' WHERE id = ANY(%s)", (ids[:40],))
        conn.execute(sql.SQL("DELETE FROM {} WHERE source_id = ANY(%s)").format(table), (ids[40:],))
        conn.commit()
    stale_gone, new_gone, new_blank, bypassed = ids[3], ids[43], ids[44], ids[45]
    inner, done = provider._embed, []

    def racing(texts, query):
        out = inner(texts, query=query)
        if not done and list(texts) != list(CANARY_TEXTS):  # the first batch: after the read, before its write
            done.append(True)
            with db.connect() as other:
                other.execute("UPDATE documents SET deleted_at = now() WHERE id = ANY(%s)", ([stale_gone, new_gone],))
                other.execute("UPDATE documents SET content = ' ' WHERE id = %s", (new_blank,))
                other.execute(sql.SQL("INSERT INTO {} (source_id, model_version, content_sha256, embedding) "
                                      "SELECT %s, model_version, '\\x00', embedding FROM {} LIMIT 1").format(
                                          table, table), (bypassed,))
                other.commit()
        return out

    provider._embed = racing
    try:
        stats = reembed(db, cfg, "documents", SPACE, provider, batch_size=80, build_hnsw=False)
    finally:
        provider._embed = inner
    assert done and stats.embedded == 80
    with db.connect() as conn:
        stored = conn.execute(sql.SQL(
            "SELECT e.source_id, s.content, e.model_version, e.content_sha256 = {h}, e.embedding::float4[] "
            "FROM {t} e JOIN documents s ON s.id = e.source_id ORDER BY 1").format(
                t=table, h=cfg.space(SPACE).content_hash(sql.SQL("s.content")))).fetchall()
    got = {r[0] for r in stored}
    assert got == set(ids) - {stale_gone, new_gone, new_blank}
    assert {r[2] for r in stored} == {mv} and all(r[3] for r in stored)
    want = provider.embed_documents([r[1] for r in stored])
    assert np.allclose(np.array([r[4] for r in stored]), want, atol=1e-3)
    assert bypassed in got  # its bypassing vector (hash \\x00) was replaced by ours
    assert reembed(db, cfg, "documents", SPACE, provider, build_hnsw=False).embedded == 0


def test_database_refuses_wrong_dimension_and_wrong_version(db, setup):
    """Mixing is refused by the table's type and CHECK constraint, not by our code."""
    cfg, provider_for, ids = setup
    reembed(db, cfg, "documents", SPACE, provider_for(SPACE))
    mv = cfg.space(SPACE).model_version
    with db.connect() as conn:
        with pytest.raises(psycopg.errors.DataException, match="expected 256 dimensions"):
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, '\\x00', %s::vector)").format(_table(cfg)),
                         ("docX", mv, "[" + ",".join(["0.1"] * 384) + "]"))
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, '\\x00', %s::vector)").format(_table(cfg)),
                         ("docX", "minilm@0000000000000000", "[" + ",".join(["0.1"] * 256) + "]"))
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(sql.SQL("UPDATE {} SET model_version = 'e5-small@x' WHERE source_id = %s").format(
                _table(cfg)), (ids[3],))


def test_two_runs_of_one_partition_do_not_interleave(db, setup):
    """A second concurrent run is refused before it writes anything."""
    cfg, provider_for, _ = setup
    with db.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"reembed:documents:{SPACE}",))
        with pytest.raises(RunInProgress, match="another run"):
            reembed(db, cfg, "documents", SPACE, provider_for(SPACE))
    stats = reembed(db, cfg, "documents", SPACE, provider_for(SPACE))
    assert stats.coverage == 1.0


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from embedding_pipeline.config import load_config
    from embedding_pipeline.db.connection import Database
    from embedding_pipeline.providers import build_provider
    from embedding_pipeline.embeddings.reembed import reembed
    cfg = load_config()
    cfg = cfg.model_copy(update={"sources": {"documents": cfg.sources["documents"]}})
    p = build_provider("minilm-256", cfg.space("minilm-256"))
    inner = p._embed
    def slow(texts, query):
        time.sleep(0.05)  # widen the window so the kill lands mid-run
        return inner(texts, query=query)
    p._embed = slow
    print("ready", flush=True)
    reembed(Database.resolve(), cfg, "documents", "minilm-256", p, batch_size=8)
""")


def test_kill_9_mid_run_then_resume(db, setup, config_path):
    """kill -9 loses at most the batch in flight; the resumed run ends exact: no loss, no duplicates."""
    cfg, provider_for, ids = setup
    with db.connect() as conn:
        more = [(f"extra{i:05d}", f"Extra row number {i} about tea, trains and tomatoes.") for i in range(320)]
        conn.cursor().executemany("INSERT INTO documents (id, content) VALUES (%s, %s)", more)
        conn.commit()
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        with db.connect(autocommit=True) as conn:
            while True:
                try:
                    n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_table(cfg))).fetchone()[0]
                except psycopg.errors.UndefinedTable:
                    n = 0
                if n >= 40 or proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with db.connect() as conn:
        partial = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_table(cfg))).fetchone()[0]
    assert 0 < partial < 400
    stats = reembed(db, cfg, "documents", SPACE, provider_for(SPACE))
    assert stats.embedded == 400 - partial
    with db.connect() as conn:
        rows = conn.execute(sql.SQL("SELECT source_id, model_version FROM {}").format(_table(cfg))).fetchall()
    assert len(rows) == len({r[0] for r in rows}) == 400
    assert {r[0] for r in rows} == set(ids) | {f"extra{i:05d}" for i in range(320)}
    assert {r[1] for r in rows} == {cfg.space(SPACE).model_version}


@pytest.mark.parametrize("model_batch, committed", [(16, 32), (8, 16)])
def test_provider_error_writes_nothing_for_the_batch(db, setup, model_batch, committed):
    """A reply of the wrong dimension mid-run stops the run; earlier batches stay, the bad one is not written.
    Read batches of 16 rows: with model batch 16 the bad reply is read batch 3's; with model batch 8
    it is the first model call of read batch 2, whose second call is never written either."""
    cfg, provider_for, _ = setup
    space = cfg.spaces[SPACE].model_copy(update={"batch_size": model_batch})
    cfg = cfg.model_copy(update={"spaces": {**cfg.spaces, SPACE: space}})
    provider = build_provider(SPACE, cfg.space(SPACE))
    provider._model = provider_for(SPACE).model
    inner, calls = provider._embed, []

    def flaky(texts, query):
        calls.append(len(texts))
        out = inner(texts, query=query)
        return out[:, :200] if len(calls) == 4 else out  # call 1 is the canary check

    provider._embed = flaky
    with pytest.raises(ProviderError, match="200-d vectors but the space is 256-d"):
        reembed(db, cfg, "documents", SPACE, provider, batch_size=16)
    with db.connect() as conn:
        n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_table(cfg))).fetchone()[0]
    assert n == committed  # the read batches before the bad reply committed, its own refused whole
    provider._embed = inner
    assert reembed(db, cfg, "documents", SPACE, provider).stored == 80


def test_unicode_only_whitespace_counts_as_blank(db, setup):
    """NBSP, zero-width spaces and a BOM carry no text: skipped as blank, never embedded, not counted missing."""
    cfg, provider_for, ids = setup
    with db.connect() as conn:
        conn.execute("UPDATE documents SET content = %s WHERE id = %s", ("\u00a0\u200b\ufeff\u3000", ids[0]))
        conn.execute("UPDATE documents SET content = %s WHERE id = %s", ("\u00a0zażółć\u200b", ids[1]))
        conn.commit()
    stats = reembed(db, cfg, "documents", SPACE, provider_for(SPACE))
    assert stats.skipped == {"blank": 1}
    assert stats.embedded == 79 and stats.coverage == 1.0


def test_progress_is_reported_within_a_read_window(setup, db, log_lines):
    """Progress moves per model batch, not per read window: at 8 rows/s a 1,024-row window would
    otherwise be minutes of silence. Here one 80-row window of 4-row model batches reports in between."""
    cfg, _, ids = setup
    small = cfg.spaces[SPACE].model_copy(update={"batch_size": 4})
    cfg = cfg.model_copy(update={"spaces": {**cfg.spaces, SPACE: small}})
    logger, lines = log_lines
    provider = build_provider(SPACE, cfg.space(SPACE))
    stats = reembed(db, cfg, "documents", SPACE, provider, batch_size=1000, logger=logger, progress_interval=0.01)
    done = [int(line.split(": ")[1].split("/")[0].replace(",", "")) for line in lines if "rows/s, ETA" in line]
    n = len(ids)
    assert stats.embedded == n and done[-1] == n
    assert any(0 < d < n for d in done), lines  # reported inside the one read window



def test_a_permanent_error_fails_the_asset_at_once_with_its_message(db, config_path):
    """A missing source table cannot be fixed by retrying: the re-embed asset fails on its first
    attempt (no RetryPolicy rounds) and the failure says which table and how to fix it."""
    import dagster as dg

    from embedding_pipeline.config import load_config
    from embedding_pipeline.defs.embeddings.assets import build
    from embedding_pipeline.defs.resources import PipelineResource

    config = load_config(config_path)  # documents is configured, but this database has no such table
    asset = next(a for a in build(config).assets if a.key == dg.AssetKey(["embeddings", "minilm_256"]))
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([asset], partition_key="documents", instance=instance, raise_on_error=False,
                                resources={"pipeline": PipelineResource(config_path=str(config_path))})
    assert not result.success
    types = [e.event_type_value for e in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in types and types.count("STEP_FAILURE") == 1
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.user_failure_data.description
    assert "public.documents does not exist" in message and "fix" in message
