"""The drift domain in Dagster: asset + checks materialized for real, schedule, sensors, alerts."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg
import pytest
from psycopg import sql

from embedding_pipeline.config import load_config
from embedding_pipeline.defs import drift as drift_defs
from embedding_pipeline.defs.drift.assets import (
    DRIFT_KEY,
    QUALITY_CHECK,
    build_drift_asset,
)
from embedding_pipeline.defs.drift.sensors import (
    drift_alert_sensor,
    drift_run_failure_sensor,
)
from embedding_pipeline.defs.embeddings import assets as embedding_assets
from embedding_pipeline.defs.resources import PipelineResource, source_partitions
from embedding_pipeline.drift.stats import CHECKS
from embedding_pipeline.evaluation.beir import EvalSet, store_eval_set
from embedding_pipeline_tests.support.drift_env import (
    SCHEMA,
    SPACE,
    TABLE,
    assert_no_content,
    write_config,
)


@pytest.fixture
def cfg_path(seeded, config_path, tmp_path, monkeypatch):
    """Both sources configured (two partitions); only documents exists and is embedded."""
    path = write_config(config_path, tmp_path, messages=True)
    monkeypatch.setenv("EMBEDDING_PIPELINE_CONFIG", str(path))
    return path


def definitions(config, path=None) -> dg.Definitions:
    """The drift domain as definitions.py merges it: with the embeddings domain and the shared resource."""
    return dg.Definitions.merge(embedding_assets.build(config), drift_defs.build(config), dg.Definitions(
        resources={"pipeline": PipelineResource(config_path=str(path) if path else None)}))


def materialize(path, instance, partition="documents"):
    config = load_config(path)
    asset = build_drift_asset(config=config, partitions=source_partitions(config))
    return dg.materialize([asset], partition_key=partition, instance=instance, raise_on_error=False,
                          resources={"pipeline": PipelineResource(config_path=str(path))})


def run_failure_sensor(result, cfg_path, instance) -> None:
    """drift_run_failure_sensor on the failed run (a context manager: PipelineResource holds nested resources)."""
    with dg.build_run_status_sensor_context(
        sensor_name="drift_run_failure_sensor", dagster_event=result.get_run_failure_event(), dagster_instance=instance,
        dagster_run=result.dagster_run, resources={"pipeline": PipelineResource(config_path=str(cfg_path))},
    ) as ctx:
        drift_run_failure_sensor(ctx.for_run_failure())


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def evaluations(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def alert_rows(db) -> list[tuple]:
    with db.connect() as conn:
        return conn.execute("SELECT check_name, severity, space, delivered FROM embedding_pipeline.alerts "
                            "ORDER BY id").fetchall()


def test_definitions_hold_nightly_schedule_sensors_and_checks(config):
    """The nightly run exists at 03:00 UTC with its sensors, and version/dims checks are the blocking ones."""
    repo = definitions(config).get_repository_def()
    schedule = repo.get_schedule_def("drift_nightly_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone, schedule.job_name) == ("0 3 * * *", "UTC",
                                                                                        "drift_nightly")
    assert {s.name for s in repo.sensor_defs} >= {"drift_catch_up_sensor", "drift_alert_sensor",
                                                  "drift_run_failure_sensor"}
    specs = {s.name: s for s in repo.assets_defs_by_key[DRIFT_KEY].check_specs}
    assert set(specs) == {*CHECKS, QUALITY_CHECK}
    assert {n for n, s in specs.items() if s.blocking} == {"single_model_version", "dimensions_match"}
    assert repo.get_job("drift_nightly").partitions_def.get_partition_keys() == ["documents", "message_embeddings"]


def test_schedule_requests_one_run_per_table(config):
    """At 03:00 every source table gets its own drift run, keyed by the night."""
    repo = definitions(config).get_repository_def()
    schedule = repo.get_schedule_def("drift_nightly_schedule")
    ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 3, 4, 3, tzinfo=UTC),
                                    repository_def=repo)
    requests = schedule.evaluate_tick(ctx).run_requests
    assert [(r.partition_key, r.run_key) for r in requests] == [
        ("documents", "drift:documents:2026-03-04"), ("message_embeddings", "drift:message_embeddings:2026-03-04")]


def test_checks_with_nothing_to_check_say_so_and_never_pass(seeded, cfg_path, instance):
    """message_embeddings is configured but has no table and nothing built: no check may show Passed;
    each says what it did not see, and the configured spaces are listed as unbuilt."""
    result = materialize(cfg_path, instance, partition="message_embeddings")
    assert result.success  # WARN, not a failed run: nothing is wrong yet, there is just nothing to prove
    ev = evaluations(result)
    assert set(ev) == {*CHECKS, QUALITY_CHECK}
    assert all(not e.passed and e.severity == dg.AssetCheckSeverity.WARN for e in ev.values())
    assert all(e.description.startswith("nothing checked: no space of message_embeddings is built") for e in ev.values())
    meta = result.asset_materializations_for_node("drift__drift_stats")[0].metadata
    assert set(meta["unbuilt_spaces"].value) == {"minilm", *load_config(cfg_path).spaces_for("message_embeddings")}


def test_materialized_drift_reports_checks_trends_and_alerts(seeded, cfg_path, instance):
    """A stale and an orphaned vector fail their checks on the materialization, with trends, PNG and alert rows."""
    with seeded.connect() as conn:
        conn.execute("UPDATE public.documents SET content = 'Rewritten: new text' WHERE id = 'doc00005'")
        conn.execute("DELETE FROM public.documents WHERE id = 'doc00001'")
    result = materialize(cfg_path, instance)
    assert result.success  # neither failure is a blocking one
    ev = evaluations(result)
    assert set(ev) == {*CHECKS, QUALITY_CHECK}
    failed = {n: e.severity for n, e in ev.items() if not e.passed}
    # No labeled eval set here: the quality check says it compared nothing instead of passing.
    assert failed == {"no_stale_vectors": dg.AssetCheckSeverity.ERROR, "no_orphans": dg.AssetCheckSeverity.WARN,
                      QUALITY_CHECK: dg.AssetCheckSeverity.WARN}
    assert ev[QUALITY_CHECK].description.startswith("nothing checked: no eval result")
    assert ev["no_stale_vectors"].partition == "documents"
    assert TABLE in ev["no_stale_vectors"].metadata["findings"].value[0]["message"]
    meta = result.asset_materializations_for_node("drift__drift_stats")[0].metadata
    assert meta[f"coverage_pct.{SPACE}"].value == 100.0 and meta[f"version_share_pct.{SPACE}"].value == 100.0
    assert (meta[f"stale.{SPACE}"].value, meta[f"orphans.{SPACE}"].value) == (1, 1)
    png = seeded.home / "reports" / "drift_documents.png"
    assert meta["version_plot"].value == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert meta["version_plot_preview"].value.startswith("![model_version over time](data:image/png;base64,")
    assert [(c, s, sp) for c, s, sp, _ in alert_rows(seeded)] == [("no_stale_vectors", "ERROR", SPACE),
                                                                 ("no_orphans", "WARN", SPACE)]


def test_blocking_version_check_stops_the_run_without_a_second_alert(seeded, cfg_path, instance):
    """A foreign model_version fails the run (blocking) after recording it; the failure sensor does not re-alert."""
    with seeded.connect() as conn:
        tbl = sql.Identifier(SCHEMA, f"documents__{SPACE}")
        ck = conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c'",
                          (tbl.as_string(conn),)).fetchone()[0]
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(tbl, sql.Identifier(ck)))
        conn.execute(sql.SQL("UPDATE {} SET model_version = 'intruder@0000' WHERE source_id = 'doc00002'").format(tbl))
    result = materialize(cfg_path, instance)
    assert not result.success
    ev = evaluations(result)["single_model_version"]
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR
    assert result.asset_materializations_for_node("drift__drift_stats")  # the numbers were still recorded
    with seeded.connect() as conn:
        assert conn.execute("SELECT count(*) FROM embedding_pipeline.drift_history").fetchone()[0] == 2
    run_failure_sensor(result, cfg_path, instance)
    assert [c for c, *_ in alert_rows(seeded)] == ["single_model_version"]


def test_failed_run_becomes_an_alert_row(seeded, cfg_path, instance):
    """A run that crashes (source table dropped) is turned into an alert naming the error and source."""
    with seeded.connect() as conn:
        conn.execute("DROP TABLE public.documents CASCADE")  # the cutover view depends on it
    result = materialize(cfg_path, instance)
    assert not result.success
    run_failure_sensor(result, cfg_path, instance)
    with seeded.connect() as conn:
        source, check, severity, message = conn.execute(
            "SELECT source, check_name, severity, message FROM embedding_pipeline.alerts").fetchone()
    assert (source, check, severity) == ("documents", "run_failed", "ERROR")
    assert "ConfigError" in message and "public.documents does not exist" in message and result.run_id in message


def test_alert_sensor_posts_failed_checks_to_webhook(seeded, cfg_path, instance, webhook, monkeypatch):
    """Failed checks reach the configured webhook as Slack JSON with table, space and numbers, once."""
    with seeded.connect() as conn:
        conn.execute(sql.SQL("DELETE FROM {} WHERE source_id IN ('doc00003', 'doc00004')").format(
            sql.Identifier(SCHEMA, f"documents__{SPACE}")))
    materialize(cfg_path, instance)
    monkeypatch.setenv("EMBEDDING_PIPELINE_ALERT_WEBHOOK", webhook.url)
    # A context manager: PipelineResource holds nested resources, which Dagster opens and closes.
    with dg.build_sensor_context(instance=instance,
                                 resources={"pipeline": PipelineResource(config_path=str(cfg_path))}) as ctx:
        first = drift_alert_sensor(ctx)
        second = drift_alert_sensor(ctx)
    assert "delivered 1, 0 still pending" in first.skip_message and "delivered 0" in second.skip_message
    (path, _, payload), = webhook.captured
    assert path == "/services/T000/B000/SECRET-TOKEN"
    assert TABLE in payload["text"] and SPACE in payload["text"] and "38 of 40" in payload["text"]
    assert "missing=2" in json.dumps(payload["blocks"])
    assert_no_content([payload])
    assert [d for *_, d in alert_rows(seeded)] == [True]


def test_catch_up_sensor_requests_tables_not_checked_recently(seeded, cfg_path, instance):
    """Tables never checked (or past 26 h) get a drift run; a table checked just now does not."""
    repo = definitions(load_config(cfg_path), cfg_path).get_repository_def()
    sensor = repo.get_sensor_def("drift_catch_up_sensor")
    before = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repo)).run_requests
    assert sorted(r.partition_key for r in before) == ["documents", "message_embeddings"]
    materialize(cfg_path, instance, partition="documents")
    after = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repo)).run_requests
    assert [(r.partition_key, r.run_key) for r in after] == [
        ("message_embeddings", "drift-catch-up:message_embeddings:0")]


def test_nightly_eval_sets_a_baseline_then_flags_a_regression(seeded, cfg_path, instance):
    """With a labeled set the active space is re-evaluated: the first nDCG@10 is the baseline, a drop alerts."""
    with seeded.connect() as conn:
        store_eval_set(conn, SCHEMA, "documents-labeled", EvalSet(
            name="documents-labeled", source="documents", kind="labeled",
            queries={"q-pasta": "how long to boil pasta", "q-flight": "flight delayed by fog",
                     "q-deploy": "deploy failed migration lock"},
            qrels={"q-pasta": {"doc00000": 1, "doc00008": 1}, "q-flight": {"doc00001": 1, "doc00009": 1},
                   "q-deploy": {"doc00002": 1, "doc00010": 1}}))
    first = materialize(cfg_path, instance)
    assert evaluations(first)[QUALITY_CHECK].passed
    (reg,) = first.asset_materializations_for_node("drift__drift_stats")[0].metadata["quality_results"].value
    assert reg["baseline_created"] and reg["space"] == SPACE and reg["eval_set"] == "documents-labeled"
    with seeded.connect() as conn:  # as if the space once scored far better on this set
        conn.execute("UPDATE embedding_pipeline.eval_reports SET metrics = jsonb_set(metrics, '{active,ndcg@10}', "
                     "to_jsonb(%s::float8)) WHERE id = %s", (reg["ndcg_at_10"] + 0.1, reg["baseline_report"]))
    second = evaluations(materialize(cfg_path, instance))[QUALITY_CHECK]
    assert not second.passed and second.severity == dg.AssetCheckSeverity.ERROR
    message = second.metadata["findings"].value[0]["message"]
    assert "nDCG@10" in message and "documents-labeled" in message and "below its baseline" in message
    assert [c for c, *_ in alert_rows(seeded)] == ["quality_no_regression"]


def test_version_job_runs_only_the_version_checks_and_says_so(seeded, cfg_path, instance):
    """drift_versions selects only the checks a version count answers: coverage, stale, orphans and quality
    are not executed in its run (never shown as passed), and the materialization names its mode."""
    defs = definitions(load_config(cfg_path), cfg_path)
    result = defs.resolve_job_def("drift_versions").execute_in_process(partition_key="documents", instance=instance,
                                                                   raise_on_error=False)
    assert result.success
    ev = evaluations(result)
    assert set(ev) == {"single_model_version", "dimensions_match", "no_null_vectors", "queue_lag"}
    assert ev["single_model_version"].passed
    meta = result.asset_materializations_for_node("drift__drift_stats")[0].metadata
    assert meta["drift_mode"].value == "version" and f"coverage_pct.{SPACE}" not in meta


def test_schedules_tag_the_mode_nightly_incremental_weekly_full(config):
    repo = definitions(config).get_repository_def()
    for name, mode in (("drift_nightly_schedule", "incremental"), ("drift_weekly_full_schedule", "full")):
        ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 1, 4, 3, tzinfo=UTC),
                                        repository_def=repo)
        requests = repo.get_schedule_def(name).evaluate_tick(ctx).run_requests
        assert len(requests) == 2 and all(r.tags["drift/mode"] == mode for r in requests)
