"""The startup validator: declared dimensions, registered identities and canary vectors.

Honcho checks declared dimensions only, and documents the same-dimension model swap as
undetectable. We check three things: each vector column's declared dimension (read from
``pg_attribute.atttypmod``, schema-qualified) against its space; each registered space's
identity against the config; and each space's canary texts re-embedded now against the
vectors stored at registration (cosine >= 0.999), which catches a different model behind
an unchanged name and dimension.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.connection import declared_dimension
from embedding_pipeline.errors import EmbeddingPipelineError, ValidationFailed
from embedding_pipeline.spaces.canaries import CANARY_MIN_COSINE, CANARY_TEXTS
from embedding_pipeline.spaces.columns import bound_legacy_column
from embedding_pipeline.spaces.registry import (
    identity_diff,
    registered_identity,
    stored_canaries,
)
from embedding_pipeline.spaces.source import SourceTable, inspect_source


@dataclass
class Check:
    kind: str  # 'dimension' | 'identity' | 'canary' | 'source'
    ok: bool
    message: str
    source: str | None = None
    space: str | None = None
    table: str | None = None
    declared: int | None = None
    configured: int | None = None
    min_cosine: float | None = None


@dataclass
class ValidationReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def _dimension_check(conn, source: str, space: str, cfg, schema: str, table: str, column: str) -> Check:
    declared = declared_dimension(conn, schema, table, column)
    where = f"{schema}.{table}.{column}"
    if declared is None:
        return Check("dimension", True, f"{where}: not created yet", source, space, where, None, cfg.dimensions)
    if declared == cfg.dimensions:
        return Check("dimension", True, f"{where} is {declared}-d as configured", source, space, where, declared,
                     cfg.dimensions)
    return Check(
        "dimension", False,
        f"{where} is declared {declared}-d but space {space!r} is configured {cfg.dimensions}-d "
        f"({cfg.origin('dimensions')}). Fix: set {cfg.origin('dimensions').split('=')[0]} back to {declared} "
        "(the model that filled the column), or register the new model as a new space and migrate to it; "
        "a column's dimension is never changed in place",
        source, space, where, declared, cfg.dimensions)


def dimension_checks(conn, config: PipelineConfig, sources: list[SourceTable]) -> list[Check]:
    checks = []
    for src in sources:
        if src.cfg.legacy_space:
            checks.append(_dimension_check(conn, src.name, src.cfg.legacy_space, config.space(src.cfg.legacy_space),
                                           src.cfg.schema_, src.cfg.table,
                                           bound_legacy_column(conn, config.project_schema, src)))
        for space in config.spaces_for(src.name):
            table = config.space(space).on(src)
            checks.append(_dimension_check(conn, src.name, space, table.space, table.schema, table.name, "embedding"))
    return checks


def identity_check(conn, config: PipelineConfig, space: str) -> Check | None:
    old = registered_identity(conn, config.project_schema, space)
    if old is None:
        return None
    new = config.space(space).identity()
    if old == new:
        return Check("identity", True, f"space {space!r} matches its registration", space=space)
    return Check("identity", False,
                 f"space {space!r} is registered as a different model ({'; '.join(identity_diff(old, new))}). Fix: "
                 "restore the previous config for this name, or add the new model under a new space name", space=space)


def canary_check(conn, config: PipelineConfig, space: str, provider) -> Check | None:
    stored = stored_canaries(conn, config.project_schema, space)
    if len(stored) == 0:
        return None
    try:
        now = provider.embed_documents(list(CANARY_TEXTS))
    except EmbeddingPipelineError as e:
        return Check("canary", False, f"space {space!r}: could not embed the canaries: {e}", space=space)
    if now.shape != stored.shape:
        return Check("canary", False, f"space {space!r}: canaries now {now.shape[1]}-d, registered "
                     f"{stored.shape[1]}-d: a different model answers under this name", space=space)
    cos = np.sum(now * stored, axis=1) / (np.linalg.norm(now, axis=1) * np.linalg.norm(stored, axis=1))
    worst = float(cos.min())
    if worst >= CANARY_MIN_COSINE:
        return Check("canary", True, f"space {space!r}: canaries reproduce (min cosine {worst:.5f})",
                     space=space, min_cosine=worst)
    return Check("canary", False,
                 f"space {space!r}: canary vectors moved (min cosine {worst:.4f} < {CANARY_MIN_COSINE}): the model "
                 "behind this name is not the one registered, though the dimension matches. Fix: restore the "
                 "registered model/endpoint, or register this model as a new space and migrate to it",
                 space=space, min_cosine=worst)


def validate_space(conn, config: PipelineConfig, space: str, provider, *, sources: list[SourceTable],
                   raise_on_failure: bool = False) -> ValidationReport:
    report = ValidationReport([c for c in dimension_checks(conn, config, sources) if c.space == space])
    for check in (identity_check(conn, config, space), canary_check(conn, config, space, provider)):
        if check is not None:
            report.checks.append(check)
    if raise_on_failure and not report.ok:
        raise ValidationFailed("; ".join(c.message for c in report.failures()))
    return report


def validate(conn, config: PipelineConfig, provider_for=None, *, sources: list[str] | None = None) -> ValidationReport:
    """Every configured table and space. ``provider_for(name)`` enables the canary checks."""
    report = ValidationReport()
    inspected = []
    for name in sources or list(config.sources):
        try:
            inspected.append(inspect_source(conn, name, config.source(name)))
        except EmbeddingPipelineError as e:
            report.checks.append(Check("source", False, str(e), source=name))
    report.checks.extend(dimension_checks(conn, config, inspected))
    spaces = sorted({s for src in inspected for s in [*config.spaces_for(src.name), src.cfg.legacy_space] if s})
    for space in spaces:
        check = identity_check(conn, config, space)
        if check is not None:
            report.checks.append(check)
            if not check.ok or provider_for is None:
                continue
            try:
                provider = provider_for(space)
            except EmbeddingPipelineError as e:
                report.checks.append(Check("canary", False, f"space {space!r}: {e}", space=space))
                continue
            canary = canary_check(conn, config, space, provider)
            if canary is not None:
                report.checks.append(canary)
    return report
