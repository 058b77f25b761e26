"""Delayed deletion on a real database: retention, backup, rollback window and the active space."""

from __future__ import annotations

from datetime import timedelta

import pytest

from embedding_pipeline.cutover.deletion import delete_retired, delete_space
from embedding_pipeline.cutover.switch import cutover, rollback
from embedding_pipeline.errors import RefusedError
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline_tests.support.cutover_env import (
    LEGACY,
    NEW,
    SOURCE,
    snapshot,
)

TABLE = f"embedding_pipeline.{space_table_name(SOURCE, NEW)}"


def _retire_new(env):
    """minilm -> minilm-256 -> rollback: minilm-256's table is retired, legacy active again."""
    cutover(env.db, env.cfg, SOURCE, NEW, force=True, actor="test")
    rollback(env.db, env.cfg, SOURCE, actor="test")
    return env.binding(NEW)


def _table_exists(env) -> bool:
    with env.db.connect() as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()[0]


def _only(result, space=NEW) -> dict:
    [d] = [d for d in result["decisions"] if d["space"] == space]
    return d


@pytest.fixture
def enabled(make):
    """An environment whose config has deletion_enabled: true."""
    return make(deletion_enabled=True)


def test_retained_until_delete_after(enabled):
    """A day before the retention ends the table stays, even with deletion enabled and a backup."""
    retired = _retire_new(enabled)
    enabled.backup(NEW)
    d = _only(delete_retired(enabled.db, enabled.cfg, now=retired.delete_after - timedelta(days=1)))
    assert d["decision"] == "retained" and _table_exists(enabled)
    assert enabled.binding(NEW).status == "retired"
    assert enabled.audit("delete_skipped")[-1]["space"] == NEW


def test_no_backup_holding_the_table_blocks_deletion(enabled):
    """Past retention, a missing backup and then one without the table both keep the table."""
    retired = _retire_new(enabled)
    later = retired.delete_after + timedelta(days=1)
    d = _only(delete_retired(enabled.db, enabled.cfg, now=later))
    assert d["decision"] == "blocked" and "no verified backup" in d["reasons"][0]
    enabled.backup()  # the source table only
    d = _only(delete_retired(enabled.db, enabled.cfg, now=later))
    assert d["decision"] == "blocked" and "does not contain" in d["reasons"][0]
    assert _table_exists(enabled) and enabled.binding(NEW).status == "retired"


def test_dry_run_unless_enabled(env):
    """With deletion_enabled false the decision is reported and audited, and nothing is dropped."""
    retired = _retire_new(env)
    env.backup(NEW)
    result = delete_retired(env.db, env.cfg, now=retired.delete_after + timedelta(days=1), dry_run=False)
    assert result["dry_run"] is True and _only(result)["decision"] == "would_drop"
    assert _table_exists(env) and env.binding(NEW).status == "retired"
    assert env.audit("delete_dry_run")[-1]["details"]["table"] == TABLE


def test_enabled_deletion_drops_the_table_and_closes_rollback(enabled):
    """Past retention with a backup: the table is dropped, the binding deleted and audited; no way back."""
    retired = _retire_new(enabled)
    enabled.backup(NEW)
    d = _only(delete_retired(enabled.db, enabled.cfg, now=retired.delete_after + timedelta(days=1)))
    assert d["decision"] == "dropped" and not _table_exists(enabled)
    gone = enabled.binding(NEW)
    assert gone.status == "deleted" and gone.deleted_at is not None
    assert enabled.audit("delete")[-1]["details"]["decision"] == "dropped"
    before = snapshot(enabled)
    with pytest.raises(RefusedError, match="was deleted"):
        rollback(enabled.db, enabled.cfg, SOURCE)
    with pytest.raises(RefusedError, match="was deleted"):
        cutover(enabled.db, enabled.cfg, SOURCE, NEW, force=True)
    assert snapshot(enabled) == before


def test_open_rollback_window_keeps_the_table(enabled):
    """A retention lengthened after the retirement keeps the rollback window, and the table, open."""
    retired = _retire_new(enabled)
    enabled.backup(NEW)
    longer = enabled.cfg.spaces[NEW].model_copy(update={"retention_days": 30})
    cfg = enabled.cfg.model_copy(update={"spaces": {**enabled.cfg.spaces, NEW: longer}})
    d = _only(delete_retired(enabled.db, cfg, now=retired.delete_after + timedelta(days=1)))
    assert d["decision"] == "blocked" and "rollback window open" in d["reasons"][0]
    assert _table_exists(enabled)


def test_legacy_column_is_operator_owned(enabled):
    """A retired legacy column is never dropped: the result names the ALTER TABLE for the operator."""
    cutover(enabled.db, enabled.cfg, SOURCE, NEW, force=True, actor="test")
    enabled.backup(NEW)
    legacy = enabled.binding(LEGACY)
    d = _only(delete_retired(enabled.db, enabled.cfg, now=legacy.delete_after + timedelta(days=1)), LEGACY)
    assert d["decision"] == "operator_owned"
    assert d["reasons"][0].startswith('operator-owned: ALTER TABLE "public"."documents" DROP COLUMN "embedding" '
                                      "after you are sure")
    with enabled.db.connect() as conn:
        assert conn.execute("SELECT count(embedding) FROM documents").fetchone()[0] == 40
    assert enabled.binding(LEGACY).status == "retired"


def test_active_space_is_never_deleted(enabled):
    """Deleting the active space is refused with no change; a far-future run leaves it alone."""
    cutover(enabled.db, enabled.cfg, SOURCE, NEW, force=True, actor="test")
    enabled.backup(NEW)
    before = snapshot(enabled)
    far = enabled.binding(NEW).activated_at + timedelta(days=1000)
    with pytest.raises(RefusedError, match="active space of source 'documents'"):
        delete_space(enabled.db, enabled.cfg, SOURCE, NEW, now=far)
    result = delete_retired(enabled.db, enabled.cfg, now=far)
    assert NEW not in {d["space"] for d in result["decisions"]}
    assert snapshot(enabled) == before and _table_exists(enabled)


def test_daily_schedule_runs_the_deletion_job(env):
    """The 04:00 UTC schedule targets the deletion job, whose run audits its dry-run decisions."""
    import dagster as dg

    from embedding_pipeline.defs.cutover.jobs import build
    from embedding_pipeline.defs.resources import PipelineResource

    _retire_new(env)
    defs = dg.Definitions.merge(build(env.cfg), dg.Definitions(
        resources={"pipeline": PipelineResource(config_path=str(env.config_path))}))
    schedule = defs.resolve_schedule_def("delete_retired_daily")
    assert schedule.cron_schedule == "0 4 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.job_name == "delete_retired"
    assert defs.resolve_job_def("delete_retired").execute_in_process().success
    assert env.audit("delete_skipped")[-1]["details"]["decision"] == "retained"


def test_nothing_retired_nothing_decided(env):
    """With no retired space the run decides nothing and touches nothing."""
    before = snapshot(env)
    assert delete_retired(env.db, env.cfg)["decisions"] == []
    assert snapshot(env) == before and env.audit() == []

