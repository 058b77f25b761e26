"""The backup asset and its blocking freshness check, materialized through Dagster on the real database."""

from __future__ import annotations

import dagster as dg

from embedding_pipeline.defs.backup.assets import CHECK, build
from embedding_pipeline.defs.resources import PipelineResource
from embedding_pipeline_tests.support.sources import make_documents


def test_backup_asset_verifies_and_check_passes(db, config):
    """A materialization yields a verified manifest, copy-pasteable commands and a passing blocking check."""
    with db.connect() as conn:
        make_documents(conn, 12)
        conn.execute("CREATE TABLE message_embeddings (id bigint PRIMARY KEY, content text, embedding vector(384))")
        conn.commit()
    defs = build(config)
    asset = defs.assets[0]
    result = dg.materialize([asset], partition_key="documents", resources={"pipeline": PipelineResource()},
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    md = result.get_asset_materialization_events()[0].materialization.metadata
    assert md["verified"].value is True
    assert "pg_restore" in md["restore_commands"].value
    assert [t["table"] for t in md["tables"].value] == ["documents"]
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [(CHECK, True)]
    spec = next(iter(asset.check_specs))
    assert spec.blocking
