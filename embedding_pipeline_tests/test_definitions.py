"""The code location: loads with `dg check defs`, and its shape does not change by accident."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_dg_check_defs_passes(tmp_path):
    """`dg check defs` (the [tool.dg] project) loads every definition on a fresh machine."""
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path), EMBEDDING_PIPELINE_HOME=str(tmp_path / "state"))
    env.pop("EMBEDDING_PIPELINE_DATABASE_URL", None)
    dg_exe = Path(sys.executable).with_name("dg")
    out = subprocess.run([str(dg_exe), "check", "defs"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "All definitions loaded successfully" in out.stdout + out.stderr


def test_groups_and_partitions():
    """Every domain group exists and per-source assets are partitioned by the configured source tables."""
    from embedding_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert {"backup", "embeddings"} <= groups
    node = graph.get(dg.AssetKey(["embeddings", "minilm_256"]))
    assert set(node.partitions_def.get_partition_keys()) == {"documents", "message_embeddings"}


SNAPSHOT = Path(__file__).with_name("snapshots") / "definitions.json"


def _partitions(partitions_def) -> dict | None:
    if partitions_def is None:
        return None
    return {"kind": type(partitions_def).__name__, "keys": sorted(partitions_def.get_partition_keys())}


def definitions_shape(defs: dg.Definitions) -> dict:
    """Names and shapes only (no descriptions or resources): what a run, a schedule or the UI refers to."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": _partitions(node.partitions_def),
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
        }
    checks = {f"{c.asset_key.to_user_string()}:{c.name}": {"blocking": graph.get_check_spec(c).blocking}
              for c in sorted(graph.asset_check_keys, key=lambda c: (c.asset_key.to_user_string(), c.name))}
    jobs = {j.name: {"partitions": _partitions(j.partitions_def)}
            for j in sorted(defs.resolve_all_job_defs(), key=lambda j: j.name) if not j.name.startswith("__")}
    schedules = {s.name: {"cron": s.cron_schedule, "job": s.job_name, "timezone": s.execution_timezone,
                          "default_status": s.default_status.value}
                 for s in sorted(defs.schedules, key=lambda s: s.name)}
    sensors = {s.name: {"type": type(s).__name__, "jobs": sorted(j.name for j in s.jobs) if s.has_jobs else [],
                        "default_status": s.default_status.value}
               for s in sorted(defs.sensors, key=lambda s: s.name)}
    return {"assets": assets, "asset_checks": checks, "jobs": jobs, "schedules": schedules, "sensors": sensors}


def test_definitions_match_snapshot():
    """A refactor must not drop or rename an asset, check, job, schedule or sensor (runs, cursors and history are
    keyed by these names); after an intended change rerun with EMBEDDING_PIPELINE_UPDATE_SNAPSHOT=1 and commit it."""
    import json

    from embedding_pipeline.definitions import defs

    shape = definitions_shape(defs)
    text = json.dumps(shape, indent=2, sort_keys=True) + "\n"
    if os.environ.get("EMBEDDING_PIPELINE_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(text)
    assert json.loads(SNAPSHOT.read_text()) == shape, (
        f"the definitions differ from {SNAPSHOT.name}; if intended, rerun with EMBEDDING_PIPELINE_UPDATE_SNAPSHOT=1")


@pytest.mark.slow
def test_demo_materializes_through_the_code_location(db, prepared_source, monkeypatch, tmp_path):
    """The demo's Dagster runs come from the CLI (the core never imports defs/): the code location's own
    job and resources re-embed a partition on a Postgres-backed instance."""
    from types import SimpleNamespace

    from embedding_pipeline.cli.demo_runs import dagster_materialize

    prepared_source(["minilm", "minilm-256"], 12)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("EMBEDDING_PIPELINE_DAGSTER_PG_URL", "")  # restored after the test; the demo sets both
    result = dagster_materialize(SimpleNamespace(db=db))("documents", ["minilm-256"])
    assert [m["space"] for m in result["materializations"]] == ["minilm-256"]
    assert result["materializations"][0]["rows_embedded"] == 12 and result["run_id"]
