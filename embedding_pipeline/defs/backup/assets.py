"""The backup asset (pg_dump + optional Redis RDB, verified by a restore) and its blocking check.

Cutover and deletion refuse without a verified backup younger than ``backup.max_age_hours``;
the check makes the same rule visible in the UI, per source partition.
"""

import dagster as dg

from embedding_pipeline.backup.catalog import check_backup_fresh
from embedding_pipeline.backup.run import backup_root
from embedding_pipeline.backup.targets import backup_source
from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.defs.resources import PipelineResource, source_partitions

CHECK = "backup_verified_and_fresh"
BACKUP_KEY = dg.AssetKey(["backup"])


def build(config: PipelineConfig) -> dg.Definitions:
    partitions = source_partitions(config)

    @dg.asset(
        key=BACKUP_KEY,
        group_name="backup",
        partitions_def=partitions,
        kinds={"postgres"},
        description="pg_dump (custom format) of the source table and all its embedding tables, plus a Redis "
                    "RDB snapshot when REDIS_URL is set; verified by restoring into a scratch database.",
        check_specs=[dg.AssetCheckSpec(CHECK, asset=BACKUP_KEY, blocking=True,
                                       description="A verified backup younger than backup.max_age_hours exists")],
    )
    def backup(context: dg.AssetExecutionContext, pipeline: PipelineResource):
        config = pipeline.config()
        db = pipeline.database()
        source = context.partition_key
        report, removed = backup_source(db, config, source)
        data = report.to_json()
        for line in data["backup_commands"] + data["restore_commands"]:
            context.log.info(line)
        yield dg.MaterializeResult(metadata={
            "verified": report.verified,
            "manifest": dg.MetadataValue.path(str(report.manifest)),
            "tables": dg.MetadataValue.json([{k: t[k] for k in ("schema", "table", "rows", "checksum")}
                                             for t in data["tables"]]),
            "dump_sha256": data["dump_sha256"],
            "backup_commands": dg.MetadataValue.md("```\n" + "\n".join(data["backup_commands"]) + "\n```"),
            "restore_commands": dg.MetadataValue.md("```\n" + "\n".join(data["restore_commands"]) + "\n```"),
            "redis": bool(data.get("redis")),
            "retention_removed": len(removed),
        })
        ok, reason = check_backup_fresh(backup_root(db, config.backup), source, config.backup.max_age_hours)
        yield dg.AssetCheckResult(check_name=CHECK, passed=ok, severity=dg.AssetCheckSeverity.ERROR,
                                  metadata={"reason": reason})

    return dg.Definitions(assets=[backup])
