"""Markdown sections of the migration plan (``plan.py`` gathers the state they render).

Every command is printed with ``"$DATABASE_URL"`` / ``"$REDIS_URL"`` in place of a URL, and any
``user:password@`` that reaches this module from a stored manifest is masked again.
"""

from __future__ import annotations

import re
import shlex

from embedding_pipeline.evaluation.smoke import endpoint_of
from embedding_pipeline.plan.model import DONE, FAILED, Plan, backup_tables
from embedding_pipeline.read_path.install import search_function_name, view_name

# The CLI commands each step names; one place to keep them in step with the CLI modules.
COMMANDS = {
    "backup": "embedding-pipeline backup --source {source}",
    "setup": "embedding-pipeline setup --source {source}",
    "reembed": "embedding-pipeline reembed --source {source} --space {space}",
    "capture": "embedding-pipeline capture enable --source {source}",
    "smoke": "embedding-pipeline smoke --space {space}",
    "capture_consume": "embedding-pipeline capture consume --source {source}",
    "drift": "embedding-pipeline drift --source {source}",
    "cutover": "embedding-pipeline cutover --source {source} --space {space}",
    "rollback": "embedding-pipeline rollback --source {source}",
    "status": "embedding-pipeline status",
    "delete": "embedding-pipeline delete-retired --dry-run",
}
_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s]*@")
_MARK = {DONE: "[x]", FAILED: "[ ] **FAILED**"}


def cmd(name: str, **kw) -> str:
    return "`" + COMMANDS[name].format(**kw) + "`"


def _mask(text: str) -> str:
    return _PASSWORD.sub(r"\1:***@", text)


def _code(lang: str, body: str) -> str:
    return f"```{lang}\n{body.rstrip()}\n```"


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"~{seconds:.1f} s"
    if seconds < 3600:
        return f"~{seconds / 60:.1f} min"
    return f"~{seconds / 3600:.1f} h"


def header(plan: Plan) -> str:
    cfg = plan.config.space(plan.space)
    eclass, evidence = endpoint_of(cfg)
    rows = [[p.name, p.source.qualified, p.active.space if p.active else "none yet",
             f"{p.counts.eligible:,}", p.source.cfg.legacy_vector_column or "-"] for p in plan.sources]
    return "\n\n".join([
        f"# Migration plan: `{plan.space}`",
        f"Generated {plan.generated_at.isoformat(timespec='seconds')} from the configuration and the live database "
        f"(project schema `{plan.config.project_schema}`). Generating it changed nothing. Until **cutover done** "
        "is checked for a source, its application keeps reading the active space.",
        _table(["target", "value"], [
            ["model", f"`{cfg.model}`"], ["revision", cfg.revision or "unpinned"], ["transport", cfg.transport],
            ["dimensions", f"{cfg.dimensions} ({cfg.storage_type})"], ["endpoint", f"{eclass}: {evidence}"],
            ["model_version (pinned in every row)", f"`{cfg.model_version}`"
             + ("" if plan.registered else " (registered at setup)")]]),
        _table(["source", "table", "active space now", "eligible rows", "legacy column"], rows),
    ])


def checklist(plan: Plan) -> str:
    out = ["## Checklist"]
    for p in plan.sources:
        out.append(f"### {p.name}")
        out.append("\n".join(f"- {_MARK.get(s.state, '[ ]')} {s.name}: {s.state}: {s.detail}" for s in p.steps))
    return "\n\n".join(out)


def cost(plan: Plan) -> str:
    out = ["## Cost of the re-embed", "",
           "Tokens are counted on a sample of the rows still to embed and scaled; the price is "
           "`price_per_million_tokens` of the space's config; the time is from its smoke throughput."]
    rows = [[p.name, f"{p.cost.rows:,}", f"{p.cost.tokens:,}", p.cost.method,
             "-" if p.cost.price is None else f"{p.cost.price:,.2f}",
             "-" if p.cost.seconds is None else _duration(p.cost.seconds)]
            if p.cost else [p.name, "-", "-", "table not created yet (`setup`)", "-", "-"] for p in plan.sources]
    return "\n".join(out + ["", _table(["source", "rows to embed", "tokens", "counted by", "price", "time"], rows)])


def schema(plan: Plan) -> str:
    cfg = plan.config.space(plan.space)
    out = ["## Schema",
           f"One table per (source, space) in `{plan.config.project_schema}`. Its CHECK constraint pins every row "
           f"to this space's `model_version`, so the database refuses a vector of any other model; "
           f"`content_sha256` (over the space fingerprint and the text) marks stale rows. Vectors are "
           f"`{cfg.storage_type}({cfg.dimensions})`. Legacy columns are adopted read-only and never altered."]
    for p in plan.sources:
        state = "exists" if p.counts.declared_dims is not None else f"created by {cmd('setup', source=p.name)}"
        out += [f"### {p.name}: `{plan.config.project_schema}.{p.table}` ({state})",
                _code("sql", f"{p.table_ddl};\n\n-- after the bulk load (spaces.build_index):\n{p.index_ddl};")]
    return "\n\n".join(out)


def indexes(plan: Plan) -> str:
    cfg = plan.config.space(plan.space)
    ix = cfg.index
    rows = [[p.name, f"{p.counts.eligible:,}", "built" if p.index_def else "not yet", _duration(p.estimate[0])]
            for p in plan.sources]
    bases = sorted({p.estimate[1] for p in plan.sources})
    out = ["## Indexes",
           f"HNSW on `embedding` with operator class `{cfg.opclass}`, "
           f"m = {ix.m}, ef_construction = {ix.ef_construction}; queries run with `hnsw.ef_search = {ix.ef_search}` "
           f"(set by the search function). Built once, after the bulk load, with `maintenance_work_mem = "
           f"{ix.maintenance_work_mem}` for that transaction only; PostgreSQL may add parallel workers "
           "(`max_parallel_maintenance_workers`).",
           _table(["source", "rows", "index", "expected build time"], rows),
           "Expected build time, linear in rows x dimensions, from: " + "; ".join(bases) +
           ". HNSW grows a little faster than linearly: read these as lower bounds."]
    out += [f"Live `{p.name}`: `{p.index_def}`" for p in plan.sources if p.index_def]
    return "\n\n".join(out)


def _batch_text(cfg) -> str:
    if cfg.batch_size is not None:
        return str(cfg.batch_size)
    from embedding_pipeline.providers.sentence_transformers import (
        ACCELERATOR_BATCH,
        CPU_BATCH,
    )

    return f"{CPU_BATCH} on CPU, {ACCELERATOR_BATCH} on a GPU (the transport's default; set `batch_size` to change it)"


def write_path(plan: Plan) -> str:
    cfg = plan.config.space(plan.space)
    out = ["## Write path",
           "Change capture first (trigger on the source, or a cursor on its `updated_at` column), then the "
           "backfill: the backfill reads one snapshot and the capture queue holds every change committed after it.",
           f"Re-embed: Dagster asset `embeddings/{plan.space.replace('-', '_')}` (partition = source, job `reembed`) "
           f"or {cmd('reembed', source='<source>', space=plan.space)}. It streams the eligible rows in key order, "
           f"embeds in batches of {_batch_text(cfg)}, writes each read window with binary COPY in its own "
           "transaction, skips rows whose content hash is unchanged, deletes vectors of rows gone or filtered out, "
           "and resumes after a crash. Rerun it until coverage is 100%; it is cheap when nothing changed."]
    for p in plan.sources:
        c = p.source.cfg
        trig = ", ".join(f"`{t}`" for t in p.triggers) or "none"
        cursor = f"`{c.updated_at_column}`" if c.updated_at_column else "none configured"
        if p.capture:
            cap = (f"capture is on ({p.capture['mode']} mode), {p.capture['queue_depth']:,} rows queued, lag "
                   f"{p.capture['queue_lag_seconds']:.0f} s; {cmd('capture_consume', source=p.name)} re-embeds them")
            if p.capture["mode"] == "cursor":
                cap += (". Warning: in cursor mode hard deletes are found only by the orphan sweep and writes that "
                        "do not bump the cursor column only by the periodic reconcile; prefer the trigger")
        else:
            cap = f"capture is off: start it before the backfill with {cmd('capture', source=p.name)}"
        out.append(f"- **{p.name}**: filter `{c.row_filter or 'none'}`; triggers on `{p.source.qualified}`: {trig}; "
                   f"cursor column: {cursor}; mode `{c.mode}`; {cap}. A re-embed rerun also catches edits "
                   "(stale by content hash) and removes vectors of deleted rows.")
    return "\n\n".join(out)


def read_path(plan: Plan) -> str:
    s = plan.config.project_schema
    out = ["## Read path",
           "Applications read one view per source and call one search function; both always point at the active "
           "space only and are replaced in the same transaction as the cutover's binding flip. Queries must be "
           "embedded with the active space's query model (`embedding-pipeline search` and `read_path.search` do "
           "this and re-embed a query that raced a switch)."]
    for p in plan.sources:
        view = f'`{s}."{view_name(p.name)}"`'
        fn = f"`{p.search_fn}`" if p.search_fn else f'`{s}."{search_function_name(p.name)}"(query, k)` (not created yet)'
        state = f"serves `{p.served}` now" if p.view_def else "not created yet (the first search or the cutover creates it for the active space)"
        out.append(f"### {p.name}\n\nView {view}: {state}. Search function: {fn}.")
        if p.view_def:
            out.append(_code("sql", p.view_def))
    return "\n\n".join(out)


def cutover(plan: Plan) -> str:
    hours = plan.config.backup.max_age_hours
    out = ["## Cutover",
           "Gates, all evaluated, every failure listed (`--force` overrides them and the audit row says so):",
           f"1. a verified backup (restored and compared) younger than {hours:g} h holding the source and target "
           "tables;\n2. coverage 100% with 0 stale vectors;\n3. the latest shadow evaluation passed its gate "
           f"(nDCG tolerance {plan.config.eval.ndcg_tolerance}) against the current active space;\n"
           "4. the validator (dimensions, identities, canaries).",
           "One transaction under the advisory lock `cutover:<source>` retires the old binding (with its "
           "`delete_after`), activates the new one and replaces the view and search function; a failure changes "
           "nothing. Dagster: job `cutover` (Launchpad config: source, space, force)."]
    for p in plan.sources:
        out.append(f"- **{p.name}**: {cmd('cutover', source=p.name, space=plan.space)}")
    return "\n\n".join(out)


def rollback(plan: Plan) -> str:
    out = ["## Rollback",
           "No gates (it is the emergency path): the source switches back to its previous space in one transaction. "
           "It works as long as the retired space is not deleted: its table (or legacy column) still exists, i.e. "
           "until its `delete_after` has passed and a deletion run dropped it. Rows edited after the switch are "
           "stale there; the command names the re-embed that refreshes them. Dagster: job `rollback`."]
    for p in plan.sources:
        prev = p.active.space if p.active and p.active.space != plan.space else (
            p.binding.previous_space if p.binding else None)
        out.append(f"- **{p.name}**: {cmd('rollback', source=p.name)}; after cutover it returns to "
                   f"`{prev or 'the previous space'}`.")
    return "\n\n".join(out)


def deletion(plan: Plan) -> str:
    cfg = plan.config
    enabled = "enabled" if cfg.deletion_enabled else "a dry run (`deletion_enabled: false`)"
    out = ["## Deletion",
           f"Deletion is {enabled}. A retired table is dropped only when: its binding is retired, `now >= "
           "delete_after` (retired_at + the space's retention), no rollback window is open, the latest verified "
           "backup of the source contains it, and it lives in the project schema. Runs daily (schedule "
           f"`delete_retired_daily`, 04:00 UTC) or {cmd('delete')}; every decision goes to the audit table."]
    for p in plan.sources:
        old = p.active.space if p.active and p.active.space != plan.space else None
        if old:
            out.append(f"- **{p.name}**: after cutover `{old}` is retired for {cfg.retention_for(old):g} days.")
        rows = [[b.space, b.status, b.storage, b.retired_at or "-", b.delete_after or "-",
                 b.deleted_at or "-"] for b in p.others if b.status in ("retired", "deleted")]
        if rows:
            out.append(_table(["space", "status", "storage", "retired_at", "delete_after", "deleted_at"], rows))
        if p.drop_legacy:
            out.append(
                f"The legacy column of **{p.name}** is operator-owned: never dropped by the pipeline. Once its "
                "retention has passed, a verified backup holds it, and no application reads or validates it (Honcho's "
                "startup validator checks this column's dimension against EMBEDDING_VECTOR_DIMENSIONS), an operator "
                "may run (printed here, never run by the pipeline):\n\n" + _code("sql", p.drop_legacy + ";") +
                "\n\nDROP COLUMN only updates the catalog (a brief ACCESS EXCLUSIVE lock) and drops the column's "
                "indexes; the space returns when rows are rewritten (VACUUM FULL or pg_repack).")
    return "\n\n".join(out)


def _pattern(qualified: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in qualified.split(".", 1))


def backup(plan: Plan) -> str:
    out = ["## Backup",
           "Take it before `setup` and again right before the cutover (the gate wants one younger than "
           f"{plan.config.backup.max_age_hours:g} h), and keep it until the retired space is deleted. "
           f"{cmd('backup', source='<source>')} runs these commands, verifies the dump by restoring it into a "
           "scratch database and comparing row counts and checksums, and writes a manifest. Passwords never go on "
           "the command line: export PGPASSWORD (or use ~/.pgpass) and REDISCLI_AUTH. Add `--redis-url` (default "
           "`$REDIS_URL`) to snapshot Redis in the same backup."]
    for p in plan.sources:
        tables = p.backup_now
        later = [t for t in backup_tables(plan.config, p) if t not in tables]
        dump = f'"$BACKUP_DIR/{p.name}.pgc"'
        pg = " ".join(["pg_dump -Fc --strict-names", *[f"-t {shlex.quote(_pattern(t))}" for t in tables],
                       '--dbname "$DATABASE_URL"', f"-f {dump}"])
        schemas = sorted({t.split(".", 1)[0] for t in tables})
        prep = "; ".join([f'CREATE SCHEMA IF NOT EXISTS "{x}"' for x in schemas] + ["CREATE EXTENSION IF NOT EXISTS vector"])
        restore = "\n".join([f'psql --dbname "$DATABASE_URL" -v ON_ERROR_STOP=1 -c {shlex.quote(prep)}',
                             "pg_restore --no-owner --clean --if-exists --single-transaction --exit-on-error "
                             f'-d "$DATABASE_URL" {dump}'])
        out += [f"### {p.name}", "Postgres:", _code("bash", pg), "Restore:", _code("bash", restore)]
        if later:
            out.append(f"Once created, {', '.join(f'`{t}`' for t in later)} joins the backup (the cutover gate "
                       "requires it).")
        if p.backup:
            out += [f"Exact commands of the latest verified backup ({p.backup['path']}):",
                    _code("bash", _mask("\n".join(p.backup.get("backup_commands", [])))), "Its restore:",
                    _code("bash", _mask("\n".join(p.backup.get("restore_commands", []))))]
    out += ["### Redis (Honcho's queue and cache)",
            _code("bash", 'redis-cli -u "$REDIS_URL" --rdb "$BACKUP_DIR/redis.rdb"'),
            "Restore (the server must not be running while its RDB file is replaced):",
            _code("bash", 'redis-cli -u "$REDIS_URL" CONFIG GET dir   # and dbfilename: where the server loads from\n'
                          'redis-cli -u "$REDIS_URL" SHUTDOWN NOSAVE   # or stop it with your service manager\n'
                          'cp "$BACKUP_DIR/redis.rdb" "<dir>/<dbfilename>"\n'
                          "# start Redis again; with appendonly yes, start it with --appendonly no first, then\n"
                          "# CONFIG SET appendonly yes (otherwise it loads the AOF and ignores the RDB)")]
    return "\n\n".join(out)


def _flat_numbers(d, prefix: str = "") -> list[tuple[str, float]]:
    out = []
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out += _flat_numbers(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((f"{prefix}{k}", v))
    return out


def evidence(plan: Plan) -> str:
    out = ["## Evidence"]
    s = plan.smoke
    out.append(f"### Smoke: `{plan.space}`")
    if s is None:
        out.append(f"none yet: {cmd('smoke', space=plan.space)}")
    else:
        keys = ["ok", "blocked", "reason", "error", "dims", "expected_dims", "p50_ms", "p95_ms", "batch_ms", "calls",
                "texts", "languages", "batch_consistent", "min_cosine", "endpoint_class", "endpoint_evidence",
                "model", "revision", "device", "model_version", "at"]
        out.append(_table(["key", "value"], [[k, ", ".join(s[k]) if isinstance(s[k], list) else s[k]]
                                             for k in keys if s.get(k) is not None]))
    for p in plan.sources:
        out.append(f"### {p.name}")
        if p.eval is None:
            out.append("Eval: none yet.")
        else:
            e = p.eval
            nums = ", ".join(f"{k} {v:.4g}" for k, v in _flat_numbers(e["metrics"])[:16])
            out.append(f"Eval: report #{e['id']} at {e['at']}, {e['kind']} set `{e['eval_set'] or '-'}`, vs "
                       f"`{e['active_space']}`, gate {e['gate_passed']}, tolerance {e['tolerance']}; {nums or 'no metrics'}"
                       + (f"; report {e['report_path']}" if e["report_path"] else ""))
        if p.drift is None:
            out.append("Drift: none yet.")
        else:
            d = p.drift
            out.append(f"Drift: at {d['at']}, binding {d['status']}, coverage {100 * d['coverage']:.2f}%, version "
                       f"share {d['version_share']:.4f}, stale {d['stale']:,}, orphans {d['orphans']:,}, NULL vectors "
                       f"{d['null_vectors']:,}, dims declared {d['declared_dims']} / configured {d['configured_dims']}.")
        if p.backup is None:
            out.append(f"Backup: none yet ({p.backup_check[1]}).")
        else:
            b = p.backup
            tables = ", ".join(f"{t['schema']}.{t['table']} ({t['rows']:,} rows)" for t in b["tables"])
            redis = f"; Redis snapshot {b['redis']['bytes']:,} bytes" if b.get("redis") else "; no Redis snapshot"
            out.append(f"Backup: {b['path']}, taken {b['created_at']}, verified {b.get('verified_at')}: {tables}{redis}. "
                       f"For the gate: {p.backup_check[1]}.")
    return "\n\n".join(out)


def render(plan: Plan) -> str:
    parts = [header(plan), checklist(plan), cost(plan), schema(plan), indexes(plan), write_path(plan), read_path(plan),
             cutover(plan), rollback(plan), deletion(plan), backup(plan), evidence(plan)]
    return _mask("\n\n".join(parts)) + "\n"
