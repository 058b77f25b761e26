"""How complete and how pure one space's vectors are for one source, counted in SQL.

Shared by the cutover gate, drift stats and status: eligible rows, stored vectors, missing,
stale (content changed since embedding), orphans (source row gone, filtered or blank), and the
distribution of ``model_version``. For an adopted legacy column (no version stored) the
non-NULL vectors are counted under the legacy space's version and the NULL share is reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db import queries as db_queries
from embedding_pipeline.db.connection import declared_dimension
from embedding_pipeline.embeddings import queries
from embedding_pipeline.spaces.columns import bound_legacy_column
from embedding_pipeline.spaces.source import SourceTable


@dataclass
class SpaceCounts:
    source: str
    space: str
    storage: str  # 'table' | 'legacy_column'
    table: str
    eligible: int = 0
    stored: int = 0
    covered: int = 0
    stale: int = 0
    orphans: int = 0
    null_vectors: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    expected_version: str = ""
    declared_dims: int | None = None
    configured_dims: int = 0

    @property
    def missing(self) -> int:
        return self.eligible - self.covered

    @property
    def coverage(self) -> float:
        return self.covered / self.eligible if self.eligible else 1.0

    @property
    def version_share(self) -> float:
        """Share of stored vectors carrying the space's own version (1.0 = one model, no drift)."""
        total = sum(self.versions.values())
        return self.versions.get(self.expected_version, 0) / total if total else 1.0

    @property
    def null_share(self) -> float:
        return self.null_vectors / self.eligible if self.eligible else 0.0

    @property
    def dims_ok(self) -> bool:
        return self.declared_dims is None or self.declared_dims == self.configured_dims

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(missing=self.missing, coverage=round(self.coverage, 6), version_share=round(self.version_share, 6),
                 null_share=round(self.null_share, 6), dims_ok=self.dims_ok)
        return d


def table_counts(conn, config: PipelineConfig, source: SourceTable, space: str) -> SpaceCounts:
    """Counts and the version distribution of a per-model table in one pass over the source and the table."""
    counts, tbl = _table_header(conn, config, source, space)
    if tbl is None:
        return counts
    resolved = config.space(space)
    for version, eligible, stored, covered, stale, orphans in conn.execute(queries.table_counts(
            source.eligible_rows(), tbl, resolved.content_hash(sql.SQL("s.content")))).fetchall():
        counts.eligible += eligible
        counts.stored += stored
        counts.covered += covered
        counts.stale += stale
        counts.orphans += orphans
        if version is not None:
            counts.versions[version] = stored
    counts.versions = dict(sorted(counts.versions.items(), key=lambda kv: -kv[1]))
    return counts


def version_counts(conn, config: PipelineConfig, source: SourceTable, space: str) -> SpaceCounts:
    """The version distribution alone (one GROUP BY over the space table's covering key); the other
    counts are left at 0 and mean nothing. An adopted legacy column is counted in full (one source scan)."""
    if source.cfg.legacy_space == space:
        return legacy_counts(conn, config, source)
    counts, tbl = _table_header(conn, config, source, space)
    if tbl is not None:
        counts.versions = dict(conn.execute(queries.count_versions(tbl)).fetchall())
    return counts


def changed_counts(conn, config: PipelineConfig, source: SourceTable, space: str, queue: sql.Identifier,
                   refused: sql.Identifier) -> tuple[int, ...]:
    """(rows, eligible, missing, stale, orphans, rows read from the source) among the rows the change
    ``queue`` holds for the source or ``refused`` holds for the space: O(rows) index probes, and the
    source is read only for rows whose latest entry carries no trigger digest for this space."""
    resolved = config.space(space)
    return conn.execute(queries.changed_counts(source.eligible_rows(), resolved.on(source).ident,
                                               resolved.content_hash(sql.SQL("s0.content")), source.id_type,
                                               queue, refused),
                        {"src": source.name, "space": space, "fp": resolved.fingerprint}).fetchone()


def _table_header(conn, config: PipelineConfig, source: SourceTable, space: str):
    """(SpaceCounts with names and dimensions, the table's identifier or None when it does not exist yet:
    then ``eligible`` is counted, everything else is 0)."""
    resolved = config.space(space)
    table = resolved.on(source)
    counts = SpaceCounts(source.name, space, "table", table.qualified, expected_version=resolved.model_version,
                         configured_dims=resolved.dimensions)
    counts.declared_dims = declared_dimension(conn, table.schema, table.name, "embedding")
    if counts.declared_dims is None and not _exists(conn, table.schema, table.name):
        counts.eligible = conn.execute(queries.count_eligible(source.eligible_rows())).fetchone()[0]
        return counts, None
    return counts, table.ident


def legacy_counts(conn, config: PipelineConfig, source: SourceTable) -> SpaceCounts:
    """The adopted in-place column: coverage is its non-NULL share among eligible rows."""
    c = source.cfg
    cfg = config.space(c.legacy_space)
    version = cfg.model_version
    # After an app column cutover the legacy space sits beside the app's column (cutover/app_flip.py).
    col = bound_legacy_column(conn, config.project_schema, source)
    counts = SpaceCounts(source.name, c.legacy_space, "legacy_column",
                         f"{c.schema_}.{c.table}.{col}", expected_version=version,
                         configured_dims=cfg.dimensions)
    counts.declared_dims = declared_dimension(conn, c.schema_, c.table, col)
    eligible, nonnull = conn.execute(queries.legacy_counts(source.ident, col, c.text_column, c.row_filter)).fetchone()
    counts.eligible, counts.stored, counts.covered = eligible, nonnull, nonnull
    counts.null_vectors = eligible - nonnull
    counts.versions = {version: nonnull} if nonnull else {}
    return counts


def space_counts(conn, config: PipelineConfig, source: SourceTable, space: str) -> SpaceCounts:
    if source.cfg.legacy_space == space:
        return legacy_counts(conn, config, source)
    return table_counts(conn, config, source, space)


def _exists(conn, schema: str, table: str) -> bool:
    return conn.execute(db_queries.select_regclass_exists(),
                        (sql.Identifier(schema, table).as_string(conn),)).fetchone()[0]


def refused_count(conn, schema: str, source: str, space: str) -> int:
    """Rows of (source, space) the provider refused in the last runs (0 before any run recorded one)."""
    if not conn.execute(db_queries.select_regclass_exists(),
                        (sql.Identifier(schema, "refused_rows").as_string(conn),)).fetchone()[0]:
        return 0
    return conn.execute(queries.count_refused(schema), (source, space)).fetchone()[0]
