"""The space registry: each space's identity and canary vectors, recorded once.

Registering a known name with a different identity is refused (the same-name model swap);
the canaries let the validator notice a different model answering under the same name.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import psycopg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.errors import SpaceIdentityError
from embedding_pipeline.spaces import queries
from embedding_pipeline.spaces.canaries import CANARY_TEXTS


def _canary_rows(provider) -> list[tuple[int, str, list[float]]]:
    vecs = provider.embed_documents(list(CANARY_TEXTS))
    return [(i, hashlib.sha256(t.encode()).hexdigest(), vecs[i].tolist()) for i, t in enumerate(CANARY_TEXTS)]


def registered_identity(conn: psycopg.Connection, schema: str, name: str) -> dict | None:
    row = conn.execute(queries.select_identity(schema), (name,)).fetchone()
    return row[0] if row else None


def identity_diff(old: dict, new: dict) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def check_identity(conn, schema: str, name: str, cfg) -> None:
    """Refuse when a registered name now describes a different space (the same-name model swap)."""
    old = registered_identity(conn, schema, name)
    if old is not None and old != cfg.identity():
        changes = identity_diff(old, cfg.identity())
        raise SpaceIdentityError(
            f"space {name!r} is registered with a different identity ({'; '.join(changes)}). "
            "Vectors of two models must never share a name: register the new model under a new space name "
            "and migrate to it (or restore the previous config)"
        )


def register_space(conn: psycopg.Connection, config: PipelineConfig, name: str, provider) -> bool:
    """Register a space (with canary vectors) or confirm it; return True when newly registered."""
    cfg = config.space(name)
    schema = config.project_schema
    check_identity(conn, schema, name, cfg)
    if registered_identity(conn, schema, name) is not None:
        return False
    canaries = _canary_rows(provider)
    with conn.transaction():
        inserted = conn.execute(
            queries.insert_space(schema),
            (name, cfg.model, cfg.revision, cfg.transport, cfg.dimensions, cfg.storage_type, cfg.query_prompt,
             cfg.document_prompt, cfg.normalize, json.dumps(cfg.identity()), cfg.fingerprint,
             cfg.model_version, cfg.retention_days),
        ).fetchone()
        if inserted is None:  # a concurrent registration won; it must be the same identity
            check_identity(conn, schema, name, cfg)
            return False
        with conn.cursor() as cur:
            cur.executemany(queries.insert_canary(schema), [(name, i, h, v) for i, h, v in canaries])
    return True


def stored_canaries(conn, schema: str, name: str) -> np.ndarray:
    rows = conn.execute(queries.select_canaries(schema), (name,)).fetchall()
    return np.asarray([r[0] for r in rows], dtype=np.float32)
