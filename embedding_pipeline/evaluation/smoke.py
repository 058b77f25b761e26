"""Smoke evidence for one space: dimensions, latency, batch-vs-single consistency, endpoint class.

The sentinel texts (English and Polish, ``sentinels.py``) are embedded one at a time over a
number of calls (p50/p95 latency) and then as one batch; every text's single and batch vectors
must agree (cosine >= 0.999) and the batch must have the space's dimension.

The endpoint is classified before anything else (``providers.endpoint.classify``: loopback,
private/internal or public, from the host and the addresses it resolves to). A non-local
endpoint is blocked where the space does not allow it (cloud without ``allow_cloud: true``, internal
with ``allow_remote: false``; ``providers.endpoint.refusal``): no provider
is built and no request is sent, and the result says ``blocked`` with the reason.

The result is metadata only: counts, numbers, model id, the endpoint's class and evidence. It
never holds a sentinel text, a vector or a credential, so it can go to logs, Dagster metadata,
JSON and the ``smoke_results`` table unchanged. The latest result per space is kept there for
the migration plan's evidence section.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import psycopg
from psycopg import sql

from embedding_pipeline.db import queries as db_queries
from embedding_pipeline.errors import ConfigError, ProviderError
from embedding_pipeline.evaluation import queries as statements
from embedding_pipeline.evaluation.sentinels import sentinel_languages, sentinel_texts
from embedding_pipeline.providers.base import cosine
from embedding_pipeline.providers.endpoint import classify, refusal
from embedding_pipeline.spaces.model import model_version

log = logging.getLogger(__name__)

DEFAULT_CALLS = 20
MAX_CALLS = 10_000
MIN_COSINE = 0.999  # same model, same weights: batching may move a vector by float noise only
SMOKE_DDL_LOCK = 724_311_009
_USERINFO = re.compile(r"//[^/@\s]+@")


def endpoint_of(cfg) -> tuple[str, str]:
    """(class, evidence) of where the space's texts would go, decided without sending anything."""
    if cfg.transport == "openai":
        return classify(cfg.base_url)
    return "local", "in-process model (sentence-transformers)"


def block_reason(name: str, cfg, endpoint_class: str, evidence: str) -> str | None:
    """The same rule as the provider's (providers.endpoint.refusal): the smoke never sends where a run may not."""
    return refusal(name, cfg, endpoint_class, evidence)


def _percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 3)


def _scrub(message: str, texts: list[str]) -> str:
    """A provider's error may echo its input or a URL's user:password; neither may leave here."""
    for t in texts:
        message = message.replace(t, "<sentinel text>")
    return _USERINFO.sub("//***@", message)


def run_smoke(name: str, cfg, provider_for: Callable[[str], object], *, calls: int = DEFAULT_CALLS,
              clock: Callable[[], float] = time.perf_counter, now: datetime | None = None) -> dict:
    """Smoke one space; return the metadata-only result (see the module docstring).

    ``provider_for(name)`` is called only when the endpoint is allowed. Provider failures (model
    missing, server down, wrong dimension) become ``error`` in the result, not exceptions."""
    if not 1 <= calls <= MAX_CALLS:
        raise ConfigError(f"smoke calls must be between 1 and {MAX_CALLS}, got {calls}")
    texts = sentinel_texts()
    endpoint_class, evidence = endpoint_of(cfg)
    reason = block_reason(name, cfg, endpoint_class, evidence)
    result = {
        "space": name, "model": cfg.model, "revision": cfg.revision, "transport": cfg.transport,
        "model_version": model_version(name, cfg.fingerprint), "endpoint_class": endpoint_class,
        "endpoint_evidence": evidence, "allow_cloud": bool(getattr(cfg, "allow_cloud", False)),
        "allow_remote": bool(getattr(cfg, "allow_remote", True)),
        "blocked": reason is not None, "reason": reason, "texts": len(texts), "languages": sentinel_languages(),
        "calls": calls, "expected_dims": cfg.dimensions, "dims": None, "dims_ok": False, "warmup_ms": None,
        "p50_ms": None, "p95_ms": None, "batch_ms": None, "batch_consistent": False, "min_cosine": None,
        "min_cosine_required": MIN_COSINE, "error": None, "ok": False,
        "at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
    }
    if reason is None:
        try:
            result.update(_measure(provider_for(name), texts, calls, clock))
        except ProviderError as e:
            result["error"] = _scrub(str(e), texts)
    result["ok"] = bool(not result["blocked"] and result["error"] is None and result["dims_ok"]
                        and result["batch_consistent"])
    log.info("smoke %s: %s", name, summary(result))
    return result


def _measure(provider, texts: list[str], calls: int, clock) -> dict:
    started = clock()
    provider.embed_documents(texts[:1])  # loads the model / opens the connection; not a latency sample
    warmup_ms = (clock() - started) * 1000
    singles: dict[int, np.ndarray] = {}
    latencies = []
    for i in range(calls):
        k = i % len(texts)
        t = clock()
        vec = provider.embed_documents([texts[k]])[0]
        latencies.append((clock() - t) * 1000)
        singles.setdefault(k, vec)
    for k in range(len(texts)):
        if k not in singles:
            singles[k] = provider.embed_documents([texts[k]])[0]
    t = clock()
    result = provider.embed(texts)
    batch_ms = (clock() - t) * 1000
    batch = result.vectors
    min_cos = min(cosine(singles[k], batch[k]) for k in range(len(texts)))
    # Tokens of the batch: the cost estimate's throughput, and (with the server's usage) its
    # characters-per-token calibration.
    extra = {"tokens": result.tokens, "tokens_method": result.tokens_method, "chars": sum(len(t) for t in texts),
             "usage_tokens": result.tokens if result.tokens_method == "usage" else None}
    if provider.config.transport == "sentence-transformers":
        extra["device"] = str(provider.model.device)  # cpu or cuda: latency means little without it
    return {"dims": int(batch.shape[1]), "dims_ok": int(batch.shape[1]) == provider.config.dimensions,
            "warmup_ms": round(warmup_ms, 3), "p50_ms": _percentile(latencies, 50),
            "p95_ms": _percentile(latencies, 95), "batch_ms": round(batch_ms, 3),
            "min_cosine": round(min_cos, 6), "batch_consistent": bool(min_cos >= MIN_COSINE), **extra}


def summary(result: dict) -> str:
    """One line for logs and the CLI; numbers only."""
    if result["blocked"]:
        return f"BLOCKED: {result['reason']}"
    head = "ok" if result["ok"] else "FAILED"
    if result["error"]:
        return f"{head}: {result['error']} (endpoint {result['endpoint_class']})"
    return (f"{head}: {result['dims']}-d (expected {result['expected_dims']}), p50 {result['p50_ms']} ms, "
            f"p95 {result['p95_ms']} ms over {result['calls']} calls, batch of {result['texts']} in "
            f"{result['batch_ms']} ms, min cosine batch vs single {result['min_cosine']}, "
            f"endpoint {result['endpoint_class']} ({result['endpoint_evidence']})")


# ---------------------------------------------------------------- storage


def ensure_smoke_tables(conn: psycopg.Connection, schema: str) -> None:
    """Create ``<schema>.smoke_results`` (latest result per space) if missing; idempotent, serialised."""
    with conn.transaction():
        conn.execute(statements.lock_ddl(), (SMOKE_DDL_LOCK,))
        conn.execute(statements.create_schema(schema))
        conn.execute(statements.create_smoke_table(schema))


def store_smoke(conn: psycopg.Connection, schema: str, result: dict) -> None:
    with conn.transaction():
        conn.execute(
            statements.upsert_smoke(schema),
            (result["space"], result["at"], json.dumps(result)))


def latest_smoke(conn: psycopg.Connection, schema: str, space: str) -> dict | None:
    """The stored result of a space, or None (also when the table does not exist yet: read-only)."""
    exists = conn.execute(db_queries.select_regclass_exists(),
                          (sql.Identifier(schema, "smoke_results").as_string(conn),)).fetchone()[0]
    if not exists:
        return None
    row = conn.execute(statements.select_smoke(schema), (space,)).fetchone()
    return row[0] if row else None
