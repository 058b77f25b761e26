"""The app column cutover (issue 15) on Honcho's real tables with real models."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from embedding_pipeline.cutover.app_env import app_env as app_env_vars
from embedding_pipeline.cutover.app_flip import cutover_app, rollback_app
from embedding_pipeline.cutover.app_stage import stage
from embedding_pipeline.errors import RefusedError
from embedding_pipeline.read_path.search import search
from embedding_pipeline.spaces.bindings import bindings
from embedding_pipeline.spaces.columns import hnsw_index_on
from embedding_pipeline.spaces.validator import validate
from embedding_pipeline_tests.support import honcho_schema
from embedding_pipeline_tests.support.app_cutover_env import (
    APP,
    APP_NAME,
    LEGACY,
    NEW,
    SAME_DIM,
    SOURCES,
    columns_of,
    rng,
)

QUERY = "how long does Alice boil pasta"


def _counts(env):
    return {t: env.q(f"SELECT count(*) FROM {t}")[0][0] for t in SOURCES}


def test_stage_adds_fills_and_indexes_the_column_resumably(app_env):
    env = app_env
    [d, m] = stage(env.db, env.cfg, APP, NEW)
    assert d.column == "embedding__minilm-256" and d.column_added and d.mode == "full"
    for r, table in ((d, "documents"), (m, "message_embeddings")):
        assert columns_of(env, table)[r.column] == "vector(256)"
        assert columns_of(env, table)["embedding"] == "vector(384)"  # the app's column is untouched
        # Every per-model vector is in the column, byte for byte.
        assert env.q(f'SELECT count(*) FROM {table} t JOIN embedding_pipeline."{table}__minilm-256" e '
                     f'ON e.source_id = t.id WHERE t."{r.column}" = e.embedding')[0][0] == r.rows_read
        assert r.batches >= 2  # fill_batch_size 7: short keyed batches
        with env.db.connect() as conn:
            idx = hnsw_index_on(conn, "public", table, r.column)
        # The app index's opclass and parameters, read from ix_<table>_embedding_hnsw.
        assert idx == {"name": f"ix_{table}_embedding__minilm-256_hnsw", "valid": True, "opclass": "vector_cosine_ops",
                       "m": 16, "ef_construction": 64}
        assert r.index_action == "built" and {"total_bytes", "dead_tuples"} <= set(r.before) | set(r.after)
        assert r.after["total_bytes"] > r.before["total_bytes"]
    # A killed fill: cursor mid-way, the rest of the column NULL, the index left INVALID.
    cut = env.q("SELECT id FROM documents ORDER BY id")[10][0]
    with env.db.connect() as conn:
        conn.execute("UPDATE embedding_pipeline.app_columns SET fill_cursor = %s, filled_watermark = NULL "
                     "WHERE source = 'documents' AND space = %s", (cut, NEW))
        conn.execute('UPDATE documents SET "embedding__minilm-256" = NULL WHERE id > %s', (cut,))
        conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
                     "'\"ix_documents_embedding__minilm-256_hnsw\"'::regclass")
        conn.commit()
    [d2] = stage(env.db, env.cfg, APP, NEW, sources=["documents"])
    later = env.q("SELECT count(*) FROM documents WHERE id > %s AND deleted_at IS NULL", (cut,))[0][0]
    assert d2.mode == "resumed" and d2.rows_written == later and d2.index_action == "rebuilt (was INVALID)"
    assert env.q('SELECT count(*) FROM documents WHERE deleted_at IS NULL AND "embedding__minilm-256" IS NULL')[0][0] == 0
    [d3] = stage(env.db, env.cfg, APP, NEW, sources=["documents"])
    assert d3.mode == "incremental" and d3.rows_written == 0 and d3.index_action == "present"


def _honcho_docs(env, qvec, k=5):
    with env.db.connect() as conn:
        return [r[0] for r in conn.execute(honcho_schema.honcho_document_query(k), {
            "ws": honcho_schema.WORKSPACE, "observer": honcho_schema.ALICE, "observed": honcho_schema.BOB,
            "q": qvec}).fetchall()]


def test_flip_serves_the_new_space_to_honchos_own_queries(app_env):
    env = app_env
    before = _counts(env)
    legacy_vecs = dict(env.q("SELECT id, embedding::text FROM documents"))
    env.gates_pass()
    stage(env.db, env.cfg, APP, NEW)
    r = cutover_app(env.db, env.cfg, APP, NEW, provider_for=env.provider_for)
    assert r["space"] == NEW and r["previous_space"] == LEGACY and not r["forced"] and r["validator"] == "ok"
    assert r["lock_held_ms"] < 1000, r
    for table in SOURCES:
        cols = columns_of(env, table)
        assert cols["embedding"] == "vector(256)" and cols["embedding__minilm"] == "vector(384)"
        assert "embedding__minilm-256" not in cols
        with env.db.connect() as conn:
            live = hnsw_index_on(conn, "public", table, "embedding")
            aside = hnsw_index_on(conn, "public", table, "embedding__minilm")
        assert live["name"] == f"ix_{table}_embedding_hnsw" and live["valid"]
        assert aside["name"] == f"ix_{table}_embedding__minilm_hnsw"
    # Nothing lost, the legacy vectors kept as they were, every live row has a new-model vector.
    assert _counts(env) == before
    assert dict(env.q("SELECT id, embedding__minilm::text FROM documents")) == legacy_vecs
    assert env.q("SELECT count(*) FROM documents WHERE deleted_at IS NULL AND embedding IS NULL")[0][0] == 0
    assert env.q("SELECT count(*) FROM message_embeddings WHERE embedding IS NULL")[0][0] == 0
    # Honcho's own query, with a new-model query vector, returns what the project's search returns.
    qvec = env.provider_for(NEW).embed_queries([QUERY])[0]
    ours = [h.source_id for h in search(env.db, env.cfg, "documents", QUERY, k=5, provider_for=env.provider_for).hits]
    assert _honcho_docs(env, qvec) == ours
    # Registry: the new space is active; the legacy binding follows its column; validator and env agree.
    with env.db.connect() as conn:
        bs = {b.space: b for b in bindings(conn, env.schema, "documents")}
        report = validate(conn, env.cfg, None, sources=list(SOURCES))
    assert bs[NEW].status == "active" and bs[LEGACY].status == "retired"
    assert bs[LEGACY].vector_column == "embedding__minilm"
    assert [c.message for c in report.failures()] == []
    assert app_env_vars(env.db, env.cfg, APP)["EMBEDDING_VECTOR_DIMENSIONS"] == "256"
    # A stale app still computing 384-d MiniLM vectors is refused by the database itself.
    old = env.provider_for(LEGACY).embed_documents(["Bob moved to Porto."])[0]
    with env.db.connect() as conn, pytest.raises(psycopg.errors.DataException, match="expected 256 dimensions"):
        honcho_schema.add_document(conn, rng(), "Bob moved to Porto.", old)
    with env.db.connect() as conn, pytest.raises(psycopg.errors.DataException, match="different vector dimensions"):
        conn.execute("SELECT id FROM documents ORDER BY embedding <=> %s LIMIT 3", (old,)).fetchall()


def _state(env):
    return ({t: columns_of(env, t) for t in SOURCES},
            env.q("SELECT source, space, status, vector_column FROM embedding_pipeline.bindings ORDER BY 1, 2"),
            env.q("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid IN "
                  "('documents'::regclass, 'message_embeddings'::regclass) ORDER BY 1"))


def test_one_failing_source_refuses_the_whole_app(app_env):
    env = app_env
    env.gates_pass(sources=["documents"])  # message_embeddings: no backup, no evaluation
    stage(env.db, env.cfg, APP, NEW)
    before = _state(env)
    with pytest.raises(RefusedError) as e:
        cutover_app(env.db, env.cfg, APP, NEW, provider_for=env.provider_for)
    assert all(r.startswith("message_embeddings: ") for r in e.value.reasons), e.value.reasons
    assert any("backup" in r for r in e.value.reasons) and any("shadow evaluation" in r for r in e.value.reasons)
    assert _state(env) == before
    refused = env.q("SELECT details->>'app' FROM embedding_pipeline.audit WHERE action = 'app_cutover_refused'")
    assert refused == [(APP,)]


def test_same_dimension_flip_waits_for_the_app_to_drain(app_env):
    env = app_env
    stage(env.db, env.cfg, APP, SAME_DIM)
    before = _state(env)
    # The app is connected (Honcho's pool sets its application_name).
    with psycopg.connect(env.url, application_name=APP_NAME) as app_conn:
        app_conn.execute("SELECT 1")
        with pytest.raises(RefusedError, match=r"both 384-d.*1 session\(s\) connected.*--drained"):
            cutover_app(env.db, env.cfg, APP, SAME_DIM, force=True)
        assert _state(env) == before
        r = cutover_app(env.db, env.cfg, APP, SAME_DIM, force=True, drained=True)
    assert r["drained"] and r["space"] == SAME_DIM
    assert columns_of(env, "documents")["embedding"] == "vector(384)"
    assert env.q("SELECT count(*) FROM documents d JOIN \"embedding_pipeline\".\"documents__minilm-p\" e "
                 "ON e.source_id = d.id WHERE d.embedding = e.embedding")[0][0] == \
        env.q("SELECT count(*) FROM documents WHERE deleted_at IS NULL")[0][0]


def test_a_long_transaction_makes_the_flip_time_out_cleanly(app_env):
    env = app_env
    stage(env.db, env.cfg, APP, NEW)
    before = _state(env)
    with psycopg.connect(env.url) as holder:
        holder.execute("SELECT count(*) FROM message_embeddings").fetchone()  # an open read: ACCESS SHARE held
        with pytest.raises(RefusedError, match=r"could not lock the app's tables.*lock_timeout 300 ms in 2 tries.*pids"):
            cutover_app(env.db, env.cfg, APP, NEW, force=True)
        assert _state(env) == before
        holder.rollback()
    r = cutover_app(env.db, env.cfg, APP, NEW, force=True)
    assert r["space"] == NEW


def test_rollback_restores_the_legacy_column_with_rows_written_meanwhile(app_env):
    env = app_env
    legacy_vecs = dict(env.q("SELECT id, embedding::text FROM documents"))
    before = _counts(env)
    stage(env.db, env.cfg, APP, NEW)
    cutover_app(env.db, env.cfg, APP, NEW, force=True)
    # The app, restarted on the new model, writes a document and a message.
    text = "Alice adopted a cat named Miso."
    new_vec = env.provider_for(NEW).embed_documents([text])[0]
    with env.db.connect() as conn:
        did = honcho_schema.add_document(conn, rng(), text, new_vec)
        honcho_schema.add_message(conn, rng(), text, 999, new_vec)
        conn.commit()
    r = rollback_app(env.db, env.cfg, APP, provider_for=env.provider_for)
    assert r["space"] == LEGACY and r["previous_space"] == NEW and r["validator"] == "ok"
    assert r["refilled_rows"] == {"documents": 1, "message_embeddings": 1}
    for table in SOURCES:
        cols = columns_of(env, table)
        assert cols["embedding"] == "vector(384)" and cols["embedding__minilm-256"] == "vector(256)"
        with env.db.connect() as conn:
            assert hnsw_index_on(conn, "public", table, "embedding")["name"] == f"ix_{table}_embedding_hnsw"
    after = dict(env.q("SELECT id, embedding::text FROM documents"))
    assert {k: after[k] for k in legacy_vecs} == legacy_vecs
    # The row written on the new model got its legacy vector back: nothing lost on rollback.
    want = env.provider_for(LEGACY).embed_documents([text])[0]
    got = np.array(env.q("SELECT embedding::text FROM documents WHERE id = %s", (did,))[0][0].strip("[]").split(","),
                   dtype=np.float32)
    assert np.allclose(got, want, atol=1e-5)
    assert _counts(env) == {t: n + 1 for t, n in before.items()}
    with env.db.connect() as conn:
        bs = {b.space: b for b in bindings(conn, env.schema, "documents")}
    assert bs[LEGACY].status == "active" and bs[LEGACY].vector_column == "embedding"
    assert app_env_vars(env.db, env.cfg, APP)["EMBEDDING_VECTOR_DIMENSIONS"] == "384"


def test_capture_keeps_the_rollback_column_current_after_the_flip(app_env):
    from embedding_pipeline.embeddings.capture import consume, enable_capture

    env = app_env
    with env.db.connect() as conn:
        for s in SOURCES:
            enable_capture(conn, env.cfg, s, mode="trigger")
            conn.commit()
    stage(env.db, env.cfg, APP, NEW)
    cutover_app(env.db, env.cfg, APP, NEW, force=True)
    text = "Bob bought a red bicycle in Porto."
    with env.db.connect() as conn:
        did = honcho_schema.add_document(conn, rng(), text, env.provider_for(NEW).embed_documents([text])[0])
        honcho_schema.add_message(conn, rng(), text, 1000)  # Honcho writes the row first, the vector later
        conn.commit()
    res = {s: consume(env.db, env.cfg, s, env.provider_for) for s in SOURCES}
    assert {s: r["app_column"]["rows"] for s, r in res.items()} == {"documents": 1, "message_embeddings": 1}
    assert res["documents"]["app_column"]["column"] == "embedding__minilm"
    got = env.q("SELECT embedding__minilm IS NOT NULL FROM documents WHERE id = %s", (did,))
    assert got == [(True,)]
    # Nothing is left for the rollback to embed: capture kept the retired space current.
    r = rollback_app(env.db, env.cfg, APP, provider_for=env.provider_for)
    assert r["refilled_rows"] == {"documents": 0, "message_embeddings": 0}
    assert env.q("SELECT count(*) FROM documents WHERE deleted_at IS NULL AND embedding IS NULL")[0][0] == 0


def test_view_cutover_of_a_column_app_source_is_refused(app_env):
    from embedding_pipeline.cutover.switch import cutover

    with pytest.raises(RefusedError, match=r"belongs to app 'honcho'.*cutover --app honcho"):
        cutover(app_env.db, app_env.cfg, "documents", NEW, force=True)


def test_rows_reembedded_after_the_fill_are_copied_inside_the_flip_up_to_a_bound(app_env):
    from embedding_pipeline.cutover.app_flip import _flip
    from embedding_pipeline.embeddings.reembed import reembed

    env = app_env
    stage(env.db, env.cfg, APP, NEW)
    # The app writes a document after the fill; capture brings the per-model table up to date.
    text = "Alice signed up for a pottery class."
    with env.db.connect() as conn:
        did = honcho_schema.add_document(conn, rng(), text, env.provider_for(LEGACY).embed_documents([text])[0])
        conn.commit()
    reembed(env.db, env.cfg, "documents", NEW, env.provider_for(NEW), ids=[did])
    tight = env.cfg.model_copy(update={"apps": {APP: env.cfg.app(APP).model_copy(update={"max_flip_remainder": 0})}})
    before = _state(env)
    with pytest.raises(RefusedError, match=r"more than 0 rows were re-embedded since its last fill"):
        _flip(env.db, tight, APP, NEW, action="app_cutover", force=False, drained=False, actor="t", details={})
    assert _state(env) == before
    r = _flip(env.db, env.cfg, APP, NEW, action="app_cutover", force=False, drained=False, actor="t", details={})
    assert {s["source"]: s["rows_refreshed_in_flip"] for s in r["sources"]} == {"documents": 1, "message_embeddings": 0}
    assert env.q('SELECT d.embedding = e.embedding FROM documents d JOIN embedding_pipeline."documents__minilm-256" e '
                 "ON e.source_id = d.id WHERE d.id = %s", (did,)) == [(True,)]


def test_an_app_writing_and_reading_through_fill_and_flip(app_env):
    """A writer thread acting like Honcho: inserts documents, bumps sync state, runs its vector query."""
    import threading
    import time

    from pgvector.psycopg import register_vector

    from embedding_pipeline.embeddings.reembed import reembed

    env = app_env
    texts = {384: env.provider_for(LEGACY).embed_documents(["Alice waters the plants."])[0],
             256: env.provider_for(NEW).embed_documents(["Alice waters the plants."])[0]}
    stop, seen, inserted, latencies = threading.Event(), [], [], []

    def app():
        r, dims = rng(), 384
        with psycopg.connect(env.url, autocommit=True, application_name="honcho-deriver") as c:
            register_vector(c)
            ids = [x[0] for x in c.execute("SELECT id FROM documents").fetchall()]
            while not stop.is_set():
                t = time.monotonic()
                try:
                    inserted.append(honcho_schema.add_document(c, r, f"Alice waters the plants ({len(inserted)}).",
                                                               texts[dims]))
                    c.execute("UPDATE documents SET sync_state = 'synced', last_sync_at = now(), "
                              "sync_attempts = sync_attempts + 1 WHERE id = %s", (r.choice(ids),))
                    c.execute(honcho_schema.honcho_document_query(3), {
                        "ws": honcho_schema.WORKSPACE, "observer": honcho_schema.ALICE,
                        "observed": honcho_schema.BOB, "q": texts[dims]}).fetchall()
                except psycopg.errors.DataException as e:
                    seen.append(str(e).splitlines()[0])
                    dims = 256  # the app restarts with `app-env`'s settings
                latencies.append(time.monotonic() - t)
                time.sleep(0.01)

    before = _counts(env)
    th = threading.Thread(target=app)
    th.start()
    try:
        time.sleep(0.3)
        stage(env.db, env.cfg, APP, NEW)
        time.sleep(0.3)
        # Rows the app inserted during the fill have no new vector yet: the coverage gate refuses.
        with pytest.raises(RefusedError, match=r"space 'minilm-256' is incomplete for public.documents"):
            cutover_app(env.db, env.cfg, APP, NEW)
        r = cutover_app(env.db, env.cfg, APP, NEW, force=True)
        time.sleep(0.5)
    finally:
        stop.set()
        th.join()
    assert r["lock_held_ms"] < 1000
    assert any("eligible rows have no 'minilm-256' vector" in w for w in r["warnings"]), r["warnings"]
    assert seen and all("expected 256 dimensions" in s or "different vector dimensions" in s for s in seen), seen
    assert max(latencies) < 2.0, max(latencies)  # the app waited for the flip, briefly, and never failed otherwise
    assert _counts(env)["documents"] == before["documents"] + len(inserted)
    # Capture's work, then the column sync: every live row ends with a new-model vector.
    reembed(env.db, env.cfg, "documents", NEW, env.provider_for(NEW))
    stage(env.db, env.cfg, APP, NEW)
    assert env.q("SELECT count(*) FROM documents WHERE deleted_at IS NULL AND embedding IS NULL")[0][0] == 0
