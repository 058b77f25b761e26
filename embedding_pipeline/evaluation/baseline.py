"""The one quality baseline of a space: its first accepted nDCG@10 stored in ``eval_reports``.

Every labeled ``eval_reports`` row stores the active space's measured summary
(``metrics.active``): the shadow eval (active against a candidate) and the nightly
active-only run alike; a shadow eval that passed its gate also stores the candidate's,
which is what the space was accepted on when it later becomes active. The baseline of
(source, space, eval set) is the first of those numbers, unless an operator accepted a later
report (``accept_baseline``: after a drop that was understood and accepted). It is read by
both decisions that judge quality, so they can never disagree on the number:

- the nightly regression check (drift ``quality_no_regression``): nDCG@10 now against it;
- the cutover gate (``runner.compare_spaces``, re-checked by ``cutover.switch``): the
  candidate's nDCG@10 against the active space's baseline minus ``eval.ndcg_tolerance``.

It replaces ``<schema>.quality_baselines`` (the drift job's own first result), which
``migrate_quality_baselines`` folds in and drops.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime

from embedding_pipeline.evaluation import queries as statements

log = logging.getLogger(__name__)

EPS = 1e-12  # float noise must not fail a tolerance-0 gate between equal scores


@dataclass(frozen=True)
class Baseline:
    source: str
    space: str
    eval_set: str
    ndcg_at_10: float
    report_id: int
    at: datetime
    role: str  # how the space was measured in that report: 'active' or 'candidate'
    accepted: bool  # an operator chose this report over the first one

    def to_json(self) -> dict:
        d = asdict(self)
        d["at"] = self.at.isoformat()
        return d


def quality_baseline(conn, schema: str, source: str, space: str, eval_set: str) -> Baseline | None:
    """The baseline of (source, space, eval set), or None when no labeled result of it is stored."""
    row = conn.execute(statements.select_baseline(schema), {"source": source, "space": space,
                                                            "eval_set": eval_set}).fetchone()
    if row is None:
        return None
    report_id, at, ndcg, role, accepted = row
    return Baseline(source, space, eval_set, float(ndcg), report_id, at, role, bool(accepted))


def gate_on_baseline(candidate_ndcg: float, baseline: float, tolerance: float) -> tuple[bool, str]:
    """The cutover gate: the candidate may lose at most ``tolerance`` nDCG@10 against the active baseline."""
    passed = candidate_ndcg >= baseline - tolerance - EPS
    rel = ">=" if passed else "<"
    return passed, (f"candidate nDCG@10 {candidate_ndcg:.4f} {rel} active baseline {baseline:.4f} - tolerance "
                    f"{tolerance:.4f}")


def accept_baseline(conn, schema: str, report_id: int) -> None:
    """Make a stored report's measurement of its active space the baseline from now on (a drop accepted)."""
    if conn.execute(statements.accept_baseline(schema), (report_id,)).rowcount != 1:
        raise LookupError(f"no labeled eval report #{report_id} in {schema}.eval_reports")


def migrate_quality_baselines(conn, schema: str) -> int:
    """Fold ``<schema>.quality_baselines`` (older installs) into ``eval_reports``, then drop it.

    The drift job stored its baseline right after the eval_reports row it measured, so each old
    baseline is the newest labeled row of its (source, space, eval set) at or before it with the
    same nDCG@10. Where that row is not already the first, it is marked accepted (an operator had
    reset the baseline by deleting the old row). A baseline with no such row left is logged and
    dropped: the first stored result becomes the baseline. Returns the rows folded in; call it
    inside a transaction holding the drift DDL lock.
    """
    old, reports = conn.execute(statements.quality_baselines_exist(schema)).fetchone()
    if not old:
        return 0
    folded = 0
    for source, space, eval_set, ndcg, at in conn.execute(statements.select_old_baselines(schema)).fetchall():
        match = None if not reports else conn.execute(statements.select_report_for_old_baseline(schema),
                             {"source": source, "space": space, "eval_set": eval_set, "ndcg": ndcg,
                              "at": at}).fetchone()
        if match is None:
            log.warning(f"quality baseline {ndcg:.4f} of {source}/{space} on {eval_set} has no eval_reports row "
                        "left: the first stored result is the baseline from now on")
            continue
        first = quality_baseline(conn, schema, source, space, eval_set)
        if first is None or first.report_id != match[0]:
            conn.execute(statements.accept_baseline(schema), (match[0],))
        folded += 1
    conn.execute(statements.drop_quality_baselines(schema))
    return folded
