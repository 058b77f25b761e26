"""The code location: loads with `dg check defs`, and its shape does not change by accident."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

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
