"""The drift stats asset, partitioned by source table, with its checks.

A run counts every space bound to the source, appends the numbers to drift_history,
evaluates the checks (results attached to this materialization, so the UI keeps their
history per partition), re-runs the labeled eval of the active space when an eval runner
and set exist, writes one alert row per failed finding (the alert sensor delivers them)
and attaches numeric trends plus a PNG of the version distribution over time.

Check severities: version and dimension checks are ERROR and blocking (they gate the
cutover: a vector of another model or size must never be served); coverage, stale and
NULL vectors are ERROR on the active space (users get wrong or no results) and WARN on
shadows (expected while a shadow fills up); orphans and queue lag are WARN (wasted space,
delayed freshness); a quality regression is ERROR but not blocking (it needs a human).
A blocking check that fails with ERROR also fails the run (after the materialization and
the alert rows are written), so nothing downstream in that run, e.g. a cutover, proceeds.
"""


import warnings

import dagster as dg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.defs.embeddings.assets import (
    partitions_of,
    reembed_key,
    source_dep,
)
from embedding_pipeline.defs.resources import PipelineResource
from embedding_pipeline.drift import alerts
from embedding_pipeline.drift import stats as drift
from embedding_pipeline.drift.plot import data_uri, plot_version_history

DRIFT_KEY = dg.AssetKey(["drift", "drift_stats"])
# The run tag choosing what a drift run counts (drift.stats.MODES); without it a run is a full check.
MODE_TAG = "drift/mode"
QUALITY_CHECK = "quality_no_regression"
QUALITY_DESCRIPTION = ("nDCG@10 of the active space on its labeled eval set is not more than eval.regression_margin "
                       "below the first result (ERROR, not blocking; passes when no eval set or runner exists)")
SEVERITY = {drift.ERROR: dg.AssetCheckSeverity.ERROR, drift.WARN: dg.AssetCheckSeverity.WARN}


def _num(x: float) -> dg.FloatMetadataValue:
    return dg.FloatMetadataValue(round(float(x), 4))


def _trends(drifts: list[drift.SpaceDrift], mode: str = "full") -> dict:
    """Numeric metadata per space: the Dagster UI plots each key over materializations. A version-only
    run reports the version share alone (its other counts were not taken and would plot as zeros)."""
    meta = {}
    for d in drifts:
        c = d.counts
        meta[f"version_share_pct.{d.space}"] = _num(100 * c.version_share)
        if mode == "version":
            continue
        meta |= {f"coverage_pct.{d.space}": _num(100 * c.coverage),
                 f"stale.{d.space}": dg.IntMetadataValue(c.stale),
                 f"orphans.{d.space}": dg.IntMetadataValue(c.orphans),
                 f"null_vectors.{d.space}": dg.IntMetadataValue(c.null_vectors),
                 f"eligible.{d.space}": dg.IntMetadataValue(c.eligible)}
    return meta


def _eval_results(result) -> list[dict]:
    """What ``evaluate_active`` returns (None, or a dict with space, eval_set and "ndcg@10") as a list."""
    if result is None:
        return []
    items = result if isinstance(result, (list, tuple)) else [result]
    out = []
    for r in items:
        get = r.get if isinstance(r, dict) else (lambda k, default=None, r=r: getattr(r, k, default))
        ndcg = next((v for v in (get("ndcg@10"), get("ndcg_at_10")) if v is not None), None)
        if ndcg is not None:
            out.append({"space": get("space"), "eval_set": get("eval_set") or "default", "ndcg_at_10": float(ndcg),
                        "runner_regressed": get("regressed"), "report_id": get("id")})
    return out


def _quality(context, pipeline: PipelineResource, db, conn, config: PipelineConfig, source: str,
             drifts: list[drift.SpaceDrift]) -> tuple[list[dict], list[drift.Finding], str]:
    """(regression results, findings, note) for the active space's labeled eval, when there is one."""
    active = next((d.space for d in drifts if d.status == "active"), None)
    if active is None:
        return [], [], "no active space bound: quality regression skipped"
    try:
        from embedding_pipeline.evaluation.runner import evaluate_active
    except ImportError:
        return [], [], "evaluation runner not available yet: quality regression skipped"
    try:
        results = _eval_results(evaluate_active(db, config, source, pipeline.provider))
    except Exception as e:  # a broken eval must not cost the night's drift numbers
        context.log.warning(f"labeled eval of {source}/{active} failed: {type(e).__name__}")
        msg = (f"the nightly labeled eval of space {active} on {source} failed ({type(e).__name__}). "
               "Fix: see the drift run's logs and run `embedding-pipeline eval` for this source by hand")
        return [], [drift.Finding(source, active, QUALITY_CHECK, drift.WARN, msg, {"error": type(e).__name__})], msg
    if not results:
        return [], [], f"no labeled eval set for {source}: quality regression skipped"
    regs, findings = [], []
    for r in results:
        space = r["space"] or active
        reg = drift.quality_regression(conn, config, source, space, r["ndcg_at_10"], eval_set=r["eval_set"],
                                       report_id=r["report_id"])
        regs.append({**reg, "runner_regressed": r["runner_regressed"]})
        if reg["regressed"]:
            findings.append(drift.Finding(source, space, QUALITY_CHECK, drift.ERROR, (
                f"space {space} on {source}: nDCG@10 {reg['ndcg_at_10']:.4f} on eval set {reg['eval_set']} is "
                f"{reg['drop']:.4f} below its baseline {reg['baseline']:.4f} (eval report #{reg['baseline_report']}, "
                f"margin {reg['margin']}); the cutover gate judges candidates against the same baseline. Fix: run "
                f"`embedding-pipeline validate --source {source}` (a changed model behind the space shows in the "
                "canaries) and inspect recent source changes; if the drop is accepted, accept tonight's report "
                f"#{r['report_id']} as the new baseline (embedding_pipeline.evaluation.baseline.accept_baseline)"),
                {k: reg[k] for k in ("ndcg_at_10", "baseline", "baseline_report", "drop", "margin")}))
    return regs, findings, f"{len(regs)} eval result(s) compared with their baseline"


def _check_result(name: str, findings: list[drift.Finding], spaces: dict, *,
                  nothing: str | None = None) -> dg.AssetCheckResult:
    """``nothing``: why there was nothing to check (a WARN failure saying so, never a green Passed)."""
    if nothing is not None:
        return dg.AssetCheckResult(asset_key=DRIFT_KEY, check_name=name, passed=False,
                                   severity=dg.AssetCheckSeverity.WARN, description=f"nothing checked: {nothing}",
                                   metadata={"nothing_checked": nothing, "spaces": dg.MetadataValue.json(spaces)})
    severity = drift.ERROR if any(f.severity == drift.ERROR for f in findings) or not findings else drift.WARN
    return dg.AssetCheckResult(
        asset_key=DRIFT_KEY, check_name=name, passed=not findings, severity=SEVERITY[severity],
        metadata={"failures": dg.IntMetadataValue(len(findings)),
                  "findings": dg.MetadataValue.json([{"space": f.space, "severity": f.severity, "message": f.message}
                                                     for f in findings]),
                  "spaces": dg.MetadataValue.json(spaces)})


def _not_run(name: str, mode: str, spaces: dict) -> dg.AssetCheckResult:
    """A check selected for a run whose mode does not count what it needs: a WARN failure saying so."""
    why = f"not run: a {mode!r} drift run does not count what this check needs; run a full drift check"
    return dg.AssetCheckResult(asset_key=DRIFT_KEY, check_name=name, passed=False,
                               severity=dg.AssetCheckSeverity.WARN, description=why,
                               metadata={"nothing_checked": why, "drift_mode": mode,
                                         "spaces": dg.MetadataValue.json(spaces)})


def build_drift_asset(*, config: PipelineConfig, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    built = sorted({s for src in config.sources for s in config.spaces_for(src)})
    # Partitioned checks (preview in the pinned Dagster) keep one status per table in the UI;
    # without them a passing table would hide another table's failure.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        specs = [dg.AssetCheckSpec(name, asset=DRIFT_KEY, blocking=blocking, description=desc,
                                   partitions_def=partitions) for name, (blocking, desc) in drift.CHECKS.items()]
        specs.append(dg.AssetCheckSpec(QUALITY_CHECK, asset=DRIFT_KEY, description=QUALITY_DESCRIPTION,
                                       partitions_def=partitions))

    # A multi_asset of one asset only because its checks can then be subset: the version-only job
    # selects the checks it answers, and the others show as not executed in its runs.
    @dg.multi_asset(
        name="drift__drift_stats",  # the node name the single asset had (run history, tests)
        specs=[dg.AssetSpec(
            DRIFT_KEY, group_name="drift", partitions_def=partitions, deps=[source_dep(s, config) for s in built],
            kinds={"postgres", "pgvector"},
            description="Per source table: model_version distribution, coverage, stale, orphan and NULL vectors, "
                        "dimensions of every bound space; appended to drift_history, alerts on failed checks. "
                        f"The run tag {MODE_TAG} says what was counted (full | incremental | version).")],
        partitions_def=partitions,
        check_specs=specs,
        can_subset=True,
    )
    def drift_stats(context: dg.AssetExecutionContext, pipeline: PipelineResource):
        config = pipeline.config()
        source = context.partition_key
        schema = config.project_schema
        mode = context.run.tags.get(MODE_TAG, "full")
        if mode not in drift.MODES:
            raise dg.Failure(f"run tag {MODE_TAG}={mode!r} is not a drift mode; use one of {drift.MODES}")
        selected = {k.name for k in context.selected_asset_check_keys}
        db = pipeline.database()
        with db.connect() as conn:
            ensure_schema(conn, schema)
            drift.ensure_drift_tables(conn, schema)
            # Commit at once: the DDL's advisory lock must not outlive it (the eval runner takes it too).
            conn.commit()
            drifts = drift.collect(conn, config, source, queue_stats=drift.queue_stats_for(conn, config, source),
                                   mode=mode)
            outcomes = [o for o in drift.evaluate(config, drifts, mode) if o.name in selected]
            conn.commit()  # no read snapshot or lock held while the eval runs
            if QUALITY_CHECK in selected and mode != "version":
                regs, q_findings, q_note = _quality(context, pipeline, db, conn, config, source, drifts)
            else:
                regs, q_findings, q_note = [], [], f"not run in a {mode!r} drift run"
            conn.commit()
            with conn.transaction():
                drift.record(conn, schema, drifts)
                alert_ids = alerts.record_findings(conn, schema, outcomes)
                alert_ids += [alerts.record_alert(conn, schema, source=f.source, space=f.space, check_name=f.check,
                                                  severity=f.severity, message=f.message, details=f.details)
                              for f in q_findings]
            conn.commit()
            rows = drift.history(conn, schema, source)
        ran = sorted({d.mode for d in drifts}) or [mode]
        metadata = {"drift_mode": mode, "drift_mode_ran": ", ".join(ran),
                    "drift_mode_notes": dg.MetadataValue.json({d.space: d.mode_note for d in drifts if d.mode_note}),
                    "spaces": dg.IntMetadataValue(len(drifts)), "alerts_recorded": dg.IntMetadataValue(len(alert_ids)),
                    "stats": dg.MetadataValue.json([d.to_json() for d in drifts]), "quality": q_note,
                    **_trends(drifts, mode)}
        if not drifts:
            metadata["note"] = f"no spaces bound to {source} yet: run `embedding-pipeline setup --source {source}`"
        if regs:
            metadata["quality_results"] = dg.MetadataValue.json(regs)
        if rows:
            png = plot_version_history(rows, db.home / "reports" / f"drift_{source}.png", source)
            metadata["version_plot"] = dg.MetadataValue.path(str(png))
            metadata["version_plot_preview"] = dg.MetadataValue.md(f"![model_version over time]({data_uri(png)})")
        # Every configured space shows up: one never built is said to be missing, not silently absent.
        configured = [s for s in [config.source(source).legacy_space, *config.spaces_for(source)] if s]
        unbuilt = [s for s in configured if s not in {d.space for d in drifts}]
        if unbuilt:
            legacy = config.source(source).legacy_space
            metadata["unbuilt_spaces"] = dg.MetadataValue.json({s: f"configured for {source} but not built: " + (
                f"run `embedding-pipeline setup --source {source}`" if s == legacy else
                f"materialize {reembed_key(s).to_user_string()} for partition(s) {', '.join(partitions_of(config, source))}")
                for s in unbuilt})
        nothing = (None if drifts else f"no space of {source} is built yet (configured: {configured}); run "
                   f"`embedding-pipeline setup --source {source}` or materialize its embeddings assets")
        checks = [_check_result(o.name, o.findings, o.metadata, nothing=nothing) for o in outcomes]
        checks += [_not_run(name, mode, {d.space: d.mode for d in drifts})
                   for name in drift.CHECKS if name in selected and name not in drift.MODE_CHECKS[mode]]
        if QUALITY_CHECK in selected:
            checks.append(_not_run(QUALITY_CHECK, mode, {}) if mode == "version" else _check_result(
                QUALITY_CHECK, q_findings, {r["space"]: r for r in regs},
                nothing=nothing or (None if regs else f"no eval result for {source}'s active space yet: {q_note}")))
        for o in outcomes:
            for f in o.findings:
                context.log.warning(f"{f.severity} {f.check}: {f.message}")
        yield dg.MaterializeResult(asset_key=DRIFT_KEY, metadata=metadata, check_results=checks)

    return drift_stats


def build_drift_job():
    # Partitioning is inferred from the drift asset (Dagster deprecates passing it here).
    return dg.define_asset_job("drift_nightly", selection=dg.AssetSelection.groups("drift"),
                               description="Drift stats and checks of one source table (every bound space); the "
                                           f"run tag {MODE_TAG} (full | incremental) says what is counted.")


def build_version_job():
    """The model-version distribution only, with only the checks it answers selected: the others are not
    executed in its runs (the UI shows them as not run, never as passed)."""
    checks = [dg.AssetCheckKey(DRIFT_KEY, name) for name in drift.MODE_CHECKS["version"]]
    return dg.define_asset_job(
        "drift_versions", selection=dg.AssetSelection.assets(DRIFT_KEY).without_checks() | dg.AssetSelection.checks(
            *checks), tags={MODE_TAG: "version"},
        description="Model-version distribution of one source table (one GROUP BY per space, about the cost of "
                    "a bare count): what the single_model_version check needs, nothing more.")
