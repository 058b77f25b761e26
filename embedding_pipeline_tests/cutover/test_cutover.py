"""Cutover and rollback on a real database with real MiniLM models: one flip, gated, reversible."""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import pytest
from psycopg import sql

from embedding_pipeline.cli.common import run_command
from embedding_pipeline.cutover.status import status
from embedding_pipeline.cutover.switch import cutover, rollback
from embedding_pipeline.errors import RefusedError
from embedding_pipeline.read_path.ann import search_space
from embedding_pipeline.read_path.search import search
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline_tests.support.cutover_env import (
    LEGACY,
    NEW,
    QUERY,
    SOURCE,
    snapshot,
)


def test_search_reads_the_legacy_column_then_the_new_space(env):
    """Before the flip answers come from the legacy column, after it from the new table; both make sense."""
    before = search(env.db, env.cfg, SOURCE, QUERY, k=5, provider_for=env.provider_for)
    assert before.space == LEGACY and len(before.hits) == 5
    env.gates_pass()
    cutover(env.db, env.cfg, SOURCE, NEW, provider_for=env.provider_for)
    after = search(env.db, env.cfg, SOURCE, QUERY, k=5, provider_for=env.provider_for)
    assert after.space == NEW and len(after.hits) == 5
    with env.db.connect() as conn:
        pasta = {r[0] for r in conn.execute("SELECT id FROM documents WHERE content LIKE 'The pasta%'")}
        dims = conn.execute(sql.SQL("SELECT vector_dims(embedding) FROM {} LIMIT 1").format(
            sql.Identifier(env.schema, "documents_active_embedding"))).fetchone()[0]
        fn = conn.execute(sql.SQL("SELECT source_id FROM {}(%s, 5)").format(
            sql.Identifier(env.schema, "documents_search")),
            (env.provider_for(NEW).embed_queries([QUERY])[0],)).fetchall()
    assert set(before.ids) <= pasta and set(after.ids) <= pasta
    assert dims == 256
    assert [r[0] for r in fn] == after.ids


def test_filtered_rows_never_appear_in_either_storage(env):
    """Soft-deleted rows vanish from the read path whether it reads the legacy column or a table."""
    first = search(env.db, env.cfg, SOURCE, QUERY, k=3, provider_for=env.provider_for)
    with env.db.connect() as conn:
        conn.execute("UPDATE documents SET deleted_at = now() WHERE id = %s", (first.ids[0],))
        conn.commit()
    assert first.ids[0] not in search(env.db, env.cfg, SOURCE, QUERY, k=10, provider_for=env.provider_for).ids
    env.gates_pass()
    cutover(env.db, env.cfg, SOURCE, NEW, provider_for=env.provider_for)
    assert first.ids[0] not in search(env.db, env.cfg, SOURCE, QUERY, k=10, provider_for=env.provider_for).ids


def test_gated_cutover_flips_bindings_view_and_audit(env):
    """With a verified backup, full coverage, a passed eval and a clean validator the flip is one change."""
    env.gates_pass()
    result = cutover(env.db, env.cfg, SOURCE, NEW, actor="alice", provider_for=env.provider_for)
    old, new = env.binding(LEGACY), env.binding(NEW)
    assert result["previous_space"] == LEGACY and result["forced"] is False
    assert new.status == "active" and new.previous_space == LEGACY
    assert old.status == "retired" and old.retired_at == new.activated_at
    assert (old.delete_after - old.retired_at).days == 14
    assert env.served() == NEW
    [row] = env.audit("cutover")
    assert row["actor"] == "alice" and row["space"] == NEW and not row["forced"]
    assert row["details"]["previous_space"] == LEGACY


def test_grants_on_the_read_path_survive_a_switch(env):
    """An application role keeps SELECT on the view and EXECUTE on the search function across a flip."""
    role = f"app_{env.dbname}"
    view, fn = (sql.Identifier(env.schema, n) for n in ("documents_active_embedding", "documents_search"))
    search(env.db, env.cfg, SOURCE, QUERY, k=1, provider_for=env.provider_for)  # creates the read path
    with env.db.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(view, sql.Identifier(role)))
        conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(fn))
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(fn, sql.Identifier(role)))
    try:
        cutover(env.db, env.cfg, SOURCE, NEW, force=True, actor="t")
        with env.db.connect() as conn:
            args = (role, f"{env.schema}.documents_active_embedding", f"{env.schema}.documents_search(vector, integer)")
            assert conn.execute("SELECT has_table_privilege(%s, %s, 'SELECT'), "
                                "has_function_privilege(%s, %s, 'EXECUTE'), has_function_privilege('public', %s, "
                                "'EXECUTE')", (args[0], args[1], args[0], args[2], args[2])).fetchone() == (
                                    True, True, False)
    finally:
        with env.db.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_refusal_lists_every_failing_gate_and_changes_nothing(env):
    """No backup, a missing row, a stale row and no eval: all four named at once, nothing changed."""
    with env.db.connect() as conn:
        table = sql.Identifier(env.schema, space_table_name(SOURCE, NEW))
        conn.execute(sql.SQL("DELETE FROM {} WHERE source_id = 'doc00001'").format(table))
        conn.execute("UPDATE documents SET content = 'edited text' WHERE id = 'doc00002'")
        conn.commit()
    before = snapshot(env)
    with pytest.raises(RefusedError) as e:
        cutover(env.db, env.cfg, SOURCE, NEW, provider_for=env.provider_for)
    text = " | ".join(e.value.reasons)
    assert len(e.value.reasons) == 3
    assert "no verified backup" in text and "1 missing, 1 stale" in text and "no shadow evaluation" in text
    assert snapshot(env) == before
    assert env.audit("cutover_refused")[0]["details"]["reasons"] == e.value.reasons


def test_eval_gate_needs_a_pass_against_the_current_active_space(env):
    """A failed gate, a verdict-less unlabeled run, a pass against another space, or a labeled pass
    without the number it was given on: all refused."""
    env.backup(NEW)
    for passed, active, kind, message in [
            (False, LEGACY, "unlabeled", "did not pass its gate"), (None, LEGACY, "unlabeled", "records no verdict"),
            (True, "e5-small", "unlabeled", "active space is now 'minilm'"),
            (True, LEGACY, "labeled", "records no candidate nDCG@10")]:
        env.eval_row(NEW, active=active, passed=passed, kind=kind)
        with pytest.raises(RefusedError, match=message) as e:
            cutover(env.db, env.cfg, SOURCE, NEW)
        assert len(e.value.reasons) == 1
    env.eval_row(NEW, active=LEGACY, passed=True)
    env.eval_row(NEW, active=NEW, passed=None)  # the drift job measuring a space alone is not a shadow eval
    cutover(env.db, env.cfg, SOURCE, NEW)
    assert env.binding(NEW).status == "active"


@pytest.mark.parametrize("space, message", [
    ("nope", "unknown space 'nope'"),
    ("mpnet", "not configured for source 'documents'"),
    (LEGACY, "already the active space"),
])
def test_structural_refusals_even_when_forced(env, space, message):
    """Unknown, unconfigured and already-active targets are refused, --force or not, with no change."""
    before = snapshot(env)
    for force in (False, True):
        with pytest.raises(RefusedError, match=message):
            cutover(env.db, env.cfg, SOURCE, space, force=force)
    assert snapshot(env) == before


def test_rollback_without_previous_space_is_refused(env):
    """The first active space has nothing to roll back to: refused, nothing changed."""
    before = snapshot(env)
    with pytest.raises(RefusedError, match="no previous space"):
        rollback(env.db, env.cfg, SOURCE)
    assert snapshot(env) == before
    assert env.audit("rollback_refused")


def test_force_is_recorded_with_who_and_the_overridden_reasons(env):
    """--force skips the gates and the audit row says who forced it and what was overridden."""
    result = cutover(env.db, env.cfg, SOURCE, NEW, force=True, actor="bob")
    assert env.binding(NEW).status == "active"
    [row] = env.audit("cutover")
    assert row["forced"] is True and row["actor"] == "bob"
    overridden = row["details"]["reasons_overridden"]
    assert overridden == result["reasons_overridden"] and len(overridden) == 2
    assert any("backup" in r for r in overridden) and any("shadow evaluation" in r for r in overridden)


def test_rollback_restores_previous_space_and_can_be_reversed(env):
    """Rollback flips back, retires the rolled-back-from space, and works again until deletion."""
    cutover(env.db, env.cfg, SOURCE, NEW, force=True, actor="t")
    result = rollback(env.db, env.cfg, SOURCE, actor="t")
    legacy, new = env.binding(LEGACY), env.binding(NEW)
    assert result["space"] == LEGACY and legacy.status == "active" and legacy.previous_space == NEW
    assert legacy.delete_after is None
    assert new.status == "retired" and (new.delete_after - new.retired_at).days == 14
    hits = search(env.db, env.cfg, SOURCE, QUERY, k=5, provider_for=env.provider_for)
    assert hits.space == LEGACY and len(hits.hits) == 5
    again = rollback(env.db, env.cfg, SOURCE, actor="t")
    assert again["space"] == NEW and env.served() == NEW
    assert [r["action"] for r in env.audit()] == ["cutover", "rollback", "rollback"]


def test_rollback_refused_when_the_legacy_space_is_configured_as_another_model(env):
    """After a cutover, Honcho's variables already name the new model: rolling back to the legacy
    space would embed queries with that model against the old vectors, so it is refused."""
    cutover(env.db, env.cfg, SOURCE, NEW, force=True, actor="t")
    legacy = env.cfg.spaces[LEGACY]
    changed = env.cfg.model_copy(update={"spaces": {**env.cfg.spaces, LEGACY: legacy.model_copy(
        update={"model": "intfloat/multilingual-e5-small"})}})
    before = snapshot(env)
    with pytest.raises(RefusedError, match=r"configured as a different model.*model: "):
        rollback(env.db, changed, SOURCE, actor="t")
    assert snapshot(env) == before


def test_a_cutover_in_progress_refuses_another_immediately(env):
    """While one switch holds the source's lock a second is refused at once, with no change."""
    before = snapshot(env)
    with env.db.connect() as holder:
        holder.execute("SELECT pg_advisory_xact_lock(hashtext('cutover:documents'))")
        started = time.monotonic()
        with pytest.raises(RefusedError, match="in progress"):
            cutover(env.db, env.cfg, SOURCE, NEW, force=True)
        assert time.monotonic() - started < 5
        holder.rollback()
    assert snapshot(env) == before


def test_two_racing_cutovers_one_wins(env):
    """Two cutovers started together: exactly one flips, the other is refused."""
    outcomes, barrier = [], threading.Barrier(2)

    def go():
        barrier.wait()
        try:
            outcomes.append(cutover(env.db, env.cfg, SOURCE, NEW, force=True)["space"])
        except RefusedError as e:
            outcomes.append(e.reasons[0])

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(NEW) == 1
    assert [o for o in outcomes if o != NEW][0].startswith(("another cutover", "space 'minilm-256' is already"))
    assert len(env.audit("cutover")) == 1


def test_readers_never_see_a_mixed_or_empty_result(env):
    """Searches looping in threads through a cutover and a rollback each get one whole space's answer."""
    env.gates_pass()
    expected = {}
    with env.db.connect() as conn:
        for space in (LEGACY, NEW):
            vec = env.provider_for(space).embed_queries([QUERY])[0]
            expected[space] = search_space(conn, env.cfg, SOURCE, space, vec, 5, exact=True)
    assert [h.distance for h in expected[LEGACY]] != pytest.approx([h.distance for h in expected[NEW]], abs=1e-4)
    seen, errors, stop = [], [], threading.Event()

    def reader():
        with env.db.connect(autocommit=True) as conn:
            while not stop.is_set():
                try:
                    r = search(conn, env.cfg, SOURCE, QUERY, k=5, provider_for=env.provider_for)
                    seen.append((r.space, r.hits))
                except Exception as e:  # noqa: BLE001 - every failure is a test failure below
                    errors.append(e)

    def wait_for(n):
        target = len(seen) + n
        while len(seen) < target and not errors:
            time.sleep(0.01)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(10)
        cutover(env.db, env.cfg, SOURCE, NEW)
        wait_for(10)
        rollback(env.db, env.cfg, SOURCE)
        wait_for(10)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert {space for space, _ in seen} == {LEGACY, NEW}
    for space, hits in seen:
        assert [h.source_id for h in hits] == [h.source_id for h in expected[space]]
        assert [h.distance for h in hits] == pytest.approx([h.distance for h in expected[space]], abs=1e-4)
    assert seen[-1][0] == LEGACY


def test_search_space_exact_matches_ann_and_reads_one_space(env):
    """search_space answers from the named space only; exact and HNSW agree on a small table."""
    vec = env.provider_for(NEW).embed_queries([QUERY])[0]
    with env.db.connect() as conn:
        ann = search_space(conn, env.cfg, SOURCE, NEW, vec, 10)
        exact = search_space(conn, env.cfg, SOURCE, NEW, vec, 10, exact=True)
        assert conn.execute("SHOW enable_indexscan").fetchone()[0] == "on"
    assert [h.source_id for h in ann] == [h.source_id for h in exact]
    assert np.all(np.diff([h.distance for h in exact]) >= 0)


def _cli(env, *argv):
    from embedding_pipeline.cli import cutover_commands

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    cutover_commands.register(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(["--config", str(env.config_path), *argv]))


def test_cli_cutover_status_and_rollback(env, capsys, monkeypatch):
    """The CLI refuses with every reason (exit 1), forces with --force, reports status, rolls back."""
    # The same real models, loaded once for the module instead of once per command.
    monkeypatch.setattr("embedding_pipeline.cli.common.cached_provider", lambda space: env.provider_for(space.name))
    assert _cli(env, "cutover", "--source", SOURCE, "--space", NEW) == 1
    assert "no verified backup" in capsys.readouterr().err
    assert _cli(env, "cutover", "--source", SOURCE, "--space", NEW, "--force", "--json") == 0
    assert json.loads(capsys.readouterr().out)["forced"] is True
    assert _cli(env, "status", "--json") == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["active_space"] == NEW and report["rollback_available"]
    spaces = {s["name"]: s for s in report["spaces"]}
    assert spaces[NEW]["coverage"] == 1.0 and spaces[NEW]["rows"] == 40 and spaces[NEW]["stale"] == 0
    assert spaces[LEGACY]["status"] == "retired" and spaces[LEGACY]["delete_after"]
    assert _cli(env, "rollback", "--source", SOURCE) == 0
    assert "active space is now minilm" in capsys.readouterr().out


def test_status_reports_every_space(env):
    """Status lists the active space and each space's state, coverage, rows and storage."""
    [report] = status(env.db, env.cfg)
    spaces = {s["name"]: s for s in report["spaces"]}
    assert report["active_space"] == LEGACY and report["read_path"]["serves"] in (None, LEGACY)
    assert spaces[LEGACY]["storage"] == "legacy_column" and spaces[LEGACY]["coverage"] == 1.0
    assert spaces[NEW]["status"] == "shadow" and spaces[NEW]["rows"] == 40


def test_dagster_cutover_job_refuses_then_forces(env, monkeypatch):
    """The Launchpad job fails a refused run with its reasons and records a forced one."""
    monkeypatch.setattr("embedding_pipeline.defs.resources.cached_provider", lambda space: env.provider_for(space.name))
    import dagster as dg

    from embedding_pipeline.defs.cutover.jobs import build
    from embedding_pipeline.defs.resources import PipelineResource

    resources = {"pipeline": PipelineResource(config_path=str(env.config_path))}
    job = dg.Definitions.merge(build(env.cfg), dg.Definitions(resources=resources)).resolve_job_def("cutover")

    def run(force):
        return job.execute_in_process(run_config={"ops": {"cutover_op": {"config": {
            "source": SOURCE, "space": NEW, "force": force}}}}, raise_on_error=False)

    refused = run(False)
    assert not refused.success and env.binding(LEGACY).status == "active"
    failure = refused.failure_data_for_node("cutover_op").user_failure_data
    assert any("no shadow evaluation" in r for r in failure.metadata["reasons"].value)
    # The message says what to click (asset and partition), the CLI's commands stay in the CLI.
    assert "materialize asset `evaluation/shadow_minilm_256`, partition `documents`" in failure.description
    assert "materialize asset `backup`, partition `documents`" in failure.description
    assert "embedding-pipeline" not in failure.description and "Traceback" not in failure.description
    hints = dict(zip(failure.metadata["reasons"].value, failure.metadata["ui_hints"].value))
    assert [h for r, h in hints.items() if "no shadow evaluation" in r] == [
        "materialize asset `evaluation/shadow_minilm_256`, partition `documents`"]
    assert run(True).success and env.binding(NEW).status == "active"
    [row] = env.audit("cutover")
    assert row["forced"] and "dagster run" in row["actor"]


def test_dagster_cutover_config_rejects_unknown_source_or_space_before_the_run(env):
    """A typo in the Launchpad is refused by Dagster's config validation, naming the allowed values; no run starts."""
    import dagster as dg

    from embedding_pipeline.defs.cutover.jobs import build
    from embedding_pipeline.defs.resources import PipelineResource

    resources = {"pipeline": PipelineResource(config_path=str(env.config_path))}
    defs = dg.Definitions.merge(build(env.cfg), dg.Definitions(resources=resources))
    allowed = " | ".join(sorted({s for src in env.cfg.sources
                                 for s in [env.cfg.source(src).legacy_space, *env.cfg.spaces_for(src)] if s}))
    for job, config, wrong, named in [
            ("cutover", {"source": SOURCE, "space": "minilm-265"}, "minilm-265", allowed),
            ("cutover", {"source": "documnets", "space": NEW}, "documnets", " | ".join(sorted(env.cfg.sources))),
            ("rollback", {"source": "documnets"}, "documnets", " | ".join(sorted(env.cfg.sources)))]:
        with pytest.raises(dg.DagsterInvalidConfigError) as e:
            defs.resolve_job_def(job).execute_in_process(run_config={"ops": {f"{job}_op": {"config": config}}})
        assert f"got {wrong}" in str(e.value) and named in str(e.value)
    assert env.binding(LEGACY).status == "active" and env.audit("cutover_refused") == []


def test_dagster_refusal_names_what_to_materialize_or_launch():
    """Each CLI command in a core refusal becomes the UI action beside it; the reasons themselves are kept."""
    from embedding_pipeline.defs.cutover.launchpad import refusal

    reasons = [f"space {NEW!r} is incomplete for public.documents: 39 of 40 eligible rows have a vector (1 missing, "
               f"0 stale); run `embedding-pipeline reembed --source {SOURCE} --space {NEW}`",
               f"source {SOURCE!r} belongs to app 'honcho' (apps.honcho.cutover: column), whose own columns must move "
               "together: use `embedding-pipeline cutover --app honcho --space X` / `rollback --app honcho`",
               "the app is connected: stop the app and pass --drained",
               "validator: dimensions differ"]
    failure = refusal(RefusedError(f"cutover of source {SOURCE!r} to space {NEW!r} refused (--force cannot override "
                                   "this)", reasons))
    assert failure.description.splitlines() == [
        f"cutover of source {SOURCE!r} to space {NEW!r} refused (force cannot override this)",
        f"- space {NEW!r} is incomplete for public.documents: 39 of 40 eligible rows have a vector (1 missing, 0 stale); "
        f"materialize asset `embeddings/minilm_256`, partition `{SOURCE}`",
        f"- source {SOURCE!r} belongs to app 'honcho' (apps.honcho.cutover: column), whose own columns must move "
        "together: launch job `app_cutover` with app: honcho, space: X / launch job `app_rollback` with app: honcho",
        "- the app is connected: stop the app and pass `drained: true` in the run config",
        "- validator: dimensions differ"]
    assert failure.metadata["reasons"].value == reasons
    assert failure.metadata["ui_hints"].value == [
        f"materialize asset `embeddings/minilm_256`, partition `{SOURCE}`",
        "launch job `app_cutover` with app: honcho, space: X; launch job `app_rollback` with app: honcho",
        "set `drained: true` in the run config", ""]
