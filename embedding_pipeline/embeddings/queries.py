"""Every SQL statement of the embeddings package, composed with ``psycopg.sql``.

Grouped by purpose: the re-embed engine (pending rows, orphans, the batch's direct
COPY and its pruning, the per-(source, space) run lock, index builds), change capture (the trigger and its
function, grants, the state row, the cursor poll, claiming queue entries), coverage counts,
and the app column kept current after a flip (``app_sync``). ``cost`` reuses the re-embed's
pending rows. The queue and state tables themselves (DDL, depth, lag) belong to ``db.queue``.

A space's own SQL stays in ``spaces.model``: callers pass its table identifier and its content
hash expression (``SpaceTable.ident``, ``Space.content_hash``), and a source's eligible rows
come from ``SourceTable.eligible_rows``.

Identifiers are always ``sql.Identifier``; values are query parameters (``%s``, ``%(name)s``,
passed by the caller), except where a statement is DDL or its value is fixed per query (the
model_version written or compared, the source name inside the trigger function), where they
are ``sql.Literal``. The operator's ``row_filter`` and a source's ``id_type`` are the raw SQL:
both come from the catalog-checked ``SourceTable``.
"""

from __future__ import annotations

from psycopg import sql

from embedding_pipeline.spaces.queries import (  # noqa: F401 (set_lock_timeout: one builder, used by capture too)
    HAS_TEXT,
    row_filter_sql,
    set_lock_timeout,
)
from embedding_pipeline.spaces.model import hash_expr


# ---------------------------------------------------------------- shards


def shard_of(id_expr: sql.Composable, shards: int) -> sql.Composed:
    """The shard (0 .. shards-1) of a row, from its primary key alone: the same for text, bigint and uuid ids.

    ``hashtextextended`` hashes the id's text form (a bigint's decimals, a uuid's canonical form);
    PostgreSQL keeps it stable across releases because hash partitioning stores its results. The
    outer ``mod(... + n, n)`` keeps a negative hash's remainder in range (``abs()`` would overflow
    on the smallest bigint); ``mod()`` rather than ``%`` so the SQL takes query parameters beside it.
    A vector's ``source_id`` has the id's type, so it hashes to the same shard.
    """
    n = sql.Literal(int(shards))
    return sql.SQL("mod(mod(hashtextextended(({id})::text, 0), {n}) + {n}, {n})").format(id=id_expr, n=n)


def in_shard(id_expr: sql.Composable, shard: tuple[int, int] | None) -> sql.Composable:
    """A predicate: the row is in shard ``(k, n)``; plain ``true`` when unsharded (None or n = 1)."""
    if shard is None or shard[1] == 1:
        return sql.SQL("true")
    k, n = shard
    return sql.SQL("{} = {}").format(shard_of(id_expr, n), sql.Literal(int(k)))


def shard_rows(rows: sql.Composable, shard: tuple[int, int] | None) -> sql.Composable:
    """``rows`` (a SELECT with an ``id`` column, e.g. a source's eligible rows) restricted to one shard."""
    if shard is None or shard[1] == 1:
        return rows
    return sql.SQL("SELECT * FROM ({rows}) sh WHERE {f}").format(rows=rows, f=in_shard(sql.SQL("sh.id"), shard))


def count_shards(eligible: sql.Composable, shards: int) -> sql.Composed:
    """(shard, eligible rows) of each shard of ``eligible``: how even the hash splits a table."""
    return sql.SQL("SELECT {s} AS shard, count(*) FROM ({e}) r GROUP BY 1 ORDER BY 1").format(
        s=shard_of(sql.SQL("r.id"), shards), e=eligible)


# ---------------------------------------------------------------- the re-embed engine


def pending_rows(eligible: sql.Composable, table: sql.Identifier, sha: sql.Composable, model_version: str, *,
                 ids: bool = False, ordered: bool = False) -> sql.Composed:
    """SELECT id_text, content, sha, has_vector, id of eligible rows with no vector, a stale one, or one of
    another version.

    ``sha``: the space's content hash over ``s.content``. ``ids``: only ``%(ids)s``. ``has_vector`` tells the
    writer which rows may be copied straight into the space table (none stored) and which need their
    stored vector replaced; ``id`` is the key in its own type, for that binary COPY.
    """
    id_filter = sql.SQL("AND s.id = ANY(%(ids)s)") if ids else sql.SQL("")
    return sql.SQL(
        "SELECT s.id::text AS id_text, s.content, {h} AS sha, e.source_id IS NOT NULL AS has_vector, s.id "
        "FROM ({eligible}) s "
        "LEFT JOIN {tbl} e ON e.source_id = s.id "
        "WHERE (e.source_id IS NULL OR e.content_sha256 <> {h} OR e.model_version <> {mv}) {id_filter} {order}"
    ).format(h=sha, mv=sql.Literal(model_version), eligible=eligible, tbl=table, id_filter=id_filter,
             order=sql.SQL("ORDER BY s.id") if ordered else sql.SQL(""))


def count_pending(pending: sql.Composable) -> sql.Composed:
    """Rows of a ``pending_rows`` query (same params)."""
    return sql.SQL("SELECT count(*) FROM ({}) p").format(pending)


def sample_pending(pending: sql.Composable) -> sql.Composed:
    """Params: limit; the content of the first rows of a ``pending_rows`` query."""
    return sql.SQL("SELECT p.content FROM ({}) p LIMIT %s").format(pending)


def delete_orphans(table: sql.Identifier, eligible: sql.Composable, *, only_ids: bool = False,
                   shard: tuple[int, int] | None = None) -> sql.Composed:
    """Vectors whose source row is not eligible (gone, filtered, blank). ``only_ids``: params ``{"ids": [...]}``.

    ``shard``: only the vectors of that shard (``eligible`` may then be the whole source's).
    """
    only = sql.SQL("e.source_id = ANY(%(ids)s) AND") if only_ids else sql.SQL("")
    return sql.SQL(
        "DELETE FROM {tbl} e WHERE {only} {in_shard} AND NOT EXISTS (SELECT 1 FROM ({eligible}) s WHERE s.id = e.source_id)"
    ).format(tbl=table, only=only, eligible=eligible, in_shard=in_shard(sql.SQL("e.source_id"), shard))


def count_blank(table: sql.Identifier, id_column: str, text_column: str, row_filter: str | None,
                shard: tuple[int, int] | None = None) -> sql.Composed:
    """(NULL texts, blank texts) among the rows the filter passes (of one shard when given)."""
    return sql.SQL(
        "SELECT count(*) FILTER (WHERE {t} IS NULL), count(*) FILTER (WHERE {t} IS NOT NULL AND NOT ({t} " + HAS_TEXT + ")) "
        "FROM {tbl} WHERE ({filt}) AND {in_shard}").format(
            t=sql.Identifier(text_column), tbl=table, filt=row_filter_sql(row_filter),
            in_shard=in_shard(sql.Identifier(id_column), shard))


def count_eligible_and_stored(eligible: sql.Composable, table: sql.Identifier,
                              shard: tuple[int, int] | None = None) -> sql.Composed:
    """(eligible rows, vectors stored) of the table, or of one shard of it."""
    return sql.SQL("SELECT (SELECT count(*) FROM ({e}) s), (SELECT count(*) FROM {t} e WHERE {f})").format(
        e=shard_rows(eligible, shard), t=table, f=in_shard(sql.SQL("e.source_id"), shard))


def copy_into_space(table: sql.Identifier) -> sql.Composed:
    """Binary COPY of (source_id, content_sha256, embedding, model_version) straight into a space table.

    The table's CHECK pins model_version and its primary key refuses a second vector per row, so a
    row the reader saw without a vector is written with no staging and no upsert.
    """
    return sql.SQL("COPY {} (source_id, content_sha256, embedding, model_version) FROM STDIN (FORMAT BINARY)").format(
        table)


def copy_into_space_text(table: sql.Identifier) -> sql.Composed:
    """``copy_into_space`` in text format, for a key type psycopg has no binary dumper for (keys sent as text)."""
    return sql.SQL("COPY {} (source_id, content_sha256, embedding, model_version) FROM STDIN").format(table)


def delete_by_ids(table: sql.Identifier, id_type: str) -> sql.Composed:
    """Params: ``{"ids": [...]}`` as text; the stored vectors of these rows (replaced in the same transaction)."""
    return sql.SQL("DELETE FROM {tbl} WHERE source_id = ANY(%(ids)s::{idt}[])").format(tbl=table, idt=sql.SQL(id_type))


def prune_ineligible(table: sql.Identifier, id_type: str, eligible: sql.Composable) -> sql.Composed:
    """Params: ``{"ids": [...]}`` as text; of these rows' vectors, those whose source row is no longer eligible.

    Run after the batch's COPY in its transaction: a row deleted, soft-deleted or blanked since the read
    leaves no orphan. Keyed by the batch's ids, so it is an index probe per id, never a source scan.
    """
    return sql.SQL(
        "DELETE FROM {tbl} t WHERE t.source_id = ANY(%(ids)s::{idt}[]) AND NOT EXISTS "
        "(SELECT 1 FROM ({el}) s WHERE s.id = t.source_id AND s.id = ANY(%(ids)s::{idt}[]))").format(
            tbl=table, idt=sql.SQL(id_type), el=eligible)


def id_type_oid() -> sql.SQL:
    """Params: a type name as format_type() writes it; its OID (the binary COPY needs the key's exact type)."""
    return sql.SQL("SELECT %s::regtype::oid")


def try_lock_run(shared: bool = False) -> sql.SQL:
    """Params: the run's lock key; a session lock, released by ``unlock_run`` (same ``shared``).

    A shard run holds its (source, space) key shared (so shards run side by side) and its own
    shard's key exclusive; a whole-table run or the index build holds the (source, space) key
    exclusive, so it never interleaves with any shard run of that table.
    """
    fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    return sql.SQL("SELECT {}(hashtext(%s))").format(sql.SQL(fn))


def unlock_run(shared: bool = False) -> sql.SQL:
    """Params: the run's lock key."""
    fn = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
    return sql.SQL("SELECT {}(hashtext(%s))").format(sql.SQL(fn))


def insert_index_build(schema: str) -> sql.Composed:
    """Params: source, space, rows, dims, seconds."""
    return sql.SQL("INSERT INTO {}.index_builds (source, space, rows, dims, seconds) "
                   "VALUES (%s, %s, %s, %s, %s)").format(sql.Identifier(schema))


def upsert_refused(schema: str) -> sql.Composed:
    """Params: source, space, source_id (text), reason."""
    return sql.SQL("INSERT INTO {}.refused_rows (source, space, source_id, reason) VALUES (%s, %s, %s, %s) "
                   "ON CONFLICT (source, space, source_id) DO UPDATE SET reason = excluded.reason, "
                   "at = now()").format(sql.Identifier(schema))


def clear_refused(schema: str, table: sql.Identifier) -> sql.Composed:
    """Params: source, space. Rows refused once that have a vector now (edited, or the server changed)."""
    return sql.SQL("DELETE FROM {}.refused_rows r WHERE r.source = %s AND r.space = %s "
                   "AND EXISTS (SELECT 1 FROM {} e WHERE e.source_id::text = r.source_id)").format(
        sql.Identifier(schema), table)


def count_refused(schema: str) -> sql.Composed:
    """Params: source, space."""
    return sql.SQL("SELECT count(*) FROM {}.refused_rows WHERE source = %s AND space = %s").format(
        sql.Identifier(schema))


def vacuum_analyze(table: sql.Identifier) -> sql.Composed:
    """Outside a transaction (autocommit)."""
    return sql.SQL("VACUUM (ANALYZE) {}").format(table)


# ---------------------------------------------------------------- change capture: trigger and state


def trigger_function_body(queue: sql.Identifier, source: str, id_column: str, text_column: str,
                          row_filter: str | None, table: str, fingerprints: list[str]) -> sql.Composed:
    """The plpgsql body that queues a source row's changes; render it and pass it to ``create_trigger_function``.

    An UPDATE is queued when the id or the text changed, or when the row filter's verdict flipped.
    The filter reads bare column names: it is evaluated over OLD / NEW as one-row relations named
    like the table, so ``documents.deleted_at IS NULL`` works too.

    Each entry also says what the row is now, so the incremental drift check never has to read the
    source again: ``eligible`` (filter passes and the text is not blank; false for a delete) and,
    when eligible, ``digests``: the row's content hash under each space fingerprint in
    ``fingerprints`` (the spaces configured when the function was last written), computed exactly as
    the engine hashes (``hash_expr``). What it adds to every queued write: the insert's two columns
    and one sha256 of the text per fingerprint (NEW's filter verdict was read before too).
    """
    cols = sql.SQL("INSERT INTO {q} (source, source_id, op, eligible, digests) VALUES ({src}, ").format(
        q=queue, src=sql.Literal(source))
    txt = sql.Identifier(text_column)
    if row_filter:
        # NEW's verdict is read once, before the branches: the UPDATE test compares it and the entry records it.
        verdict = sql.SQL(
            "SELECT coalesce(({f}), false) INTO _ep_was FROM (SELECT OLD.*) AS {a};\n"
            "      IF _ep_was = _ep_now THEN RETURN NULL; END IF;").format(f=sql.SQL(row_filter), a=sql.Identifier(table))
        now = sql.SQL("SELECT coalesce(({f}), false) INTO _ep_now FROM (SELECT NEW.*) AS {a};").format(
            f=sql.SQL(row_filter), a=sql.Identifier(table))
    else:
        verdict = sql.SQL("RETURN NULL;")
        now = sql.SQL("_ep_now := true;")
    pairs = sql.SQL(", ").join(
        sql.SQL("{fp}, encode({h}, 'hex')").format(fp=sql.Literal(fp), h=hash_expr(fp, sql.SQL("NEW.{}").format(txt)))
        for fp in fingerprints)
    return sql.SQL("""
#variable_conflict use_column
DECLARE
  _ep_was boolean;
  _ep_now boolean;
BEGIN
  IF TG_OP = 'DELETE' THEN
    {ins}OLD.{id}::text, 'D', false, NULL);
    RETURN NULL;
  END IF;
  {now}
  IF TG_OP = 'UPDATE' THEN
    IF OLD.{id} IS DISTINCT FROM NEW.{id} THEN
      {ins}OLD.{id}::text, 'D', false, NULL);
    ELSIF OLD.{txt} IS NOT DISTINCT FROM NEW.{txt} THEN
      {verdict}
    END IF;
  END IF;
  _ep_now := _ep_now AND coalesce(NEW.{txt} {has_text}, false);
  {ins}NEW.{id}::text, left(TG_OP, 1), _ep_now, CASE WHEN _ep_now THEN jsonb_build_object({pairs}) END);
  RETURN NULL;
END
""").format(ins=cols, id=sql.Identifier(id_column), txt=txt, verdict=verdict, now=now, has_text=sql.SQL(HAS_TEXT),
            pairs=pairs)


def create_trigger_function(function: sql.Identifier, body: str) -> sql.Composed:
    """``body``: ``trigger_function_body`` rendered to text (``as_string(conn)``)."""
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql SECURITY INVOKER AS {body}"
    ).format(fn=function, body=sql.Literal(body))


def create_trigger(trigger: str, table: sql.Identifier, function: sql.Identifier) -> sql.Composed:
    return sql.SQL(
        "CREATE TRIGGER {tg} AFTER INSERT OR UPDATE OR DELETE ON {tbl} FOR EACH ROW EXECUTE FUNCTION {fn}()"
    ).format(tg=sql.Identifier(trigger), tbl=table, fn=function)


def drop_trigger(trigger: str, table: sql.Identifier) -> sql.Composed:
    return sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), table)


def drop_function(function: sql.Identifier) -> sql.Composed:
    return sql.SQL("DROP FUNCTION IF EXISTS {}()").format(function)


def has_trigger() -> sql.SQL:
    """Params: the table's qualified name as text, trigger name."""
    return sql.SQL("SELECT count(*) > 0 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s")


def select_function_source() -> sql.SQL:
    """Params: schema, function name; its plpgsql source (no row when it does not exist)."""
    return sql.SQL("SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                   "WHERE n.nspname = %s AND p.proname = %s")


def count_functions() -> sql.SQL:
    """Params: schema, function name."""
    return sql.SQL("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                   "WHERE n.nspname = %s AND p.proname = %s")


def select_writer_roles() -> sql.SQL:
    """Params: the table's qualified name as text. Roles (NULL for PUBLIC) but the owner that may write it."""
    return sql.SQL(
        "SELECT DISTINCT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END "
        "FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass(%s) AND a.grantee <> c.relowner "
        "AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE')")


def grant_queue(schema: str, queue: str, role: str | None) -> list[sql.Composed]:
    """What a writer of the source needs for the trigger to queue: schema usage, INSERT, the id sequence.

    ``role`` None: PUBLIC.
    """
    who = sql.SQL("PUBLIC") if role is None else sql.Identifier(role)
    return [sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), who),
            sql.SQL("GRANT INSERT ON {} TO {}").format(sql.Identifier(schema, queue), who),
            sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sql.Identifier(schema, f"{queue}_id_seq"), who)]


def upsert_state_trigger(state: sql.Identifier) -> sql.Composed:
    """Params: source; a row already in trigger mode is left as it is."""
    return sql.SQL(
        "INSERT INTO {} AS st (source, mode, high_water) VALUES (%s, 'trigger', NULL) ON CONFLICT (source) "
        "DO UPDATE SET mode = 'trigger', high_water = NULL, enabled_at = now() WHERE st.mode <> 'trigger'"
    ).format(state)


def upsert_state_cursor(state: sql.Identifier) -> sql.Composed:
    """Params: source, the safe point (``transaction_floor``); the mark starts now, a row already in
    cursor mode keeps its marks."""
    return sql.SQL(
        "INSERT INTO {} AS st (source, mode, high_water, scan_from, reconciled_at) "
        "VALUES (%s, 'cursor', clock_timestamp(), %s, clock_timestamp()) "
        "ON CONFLICT (source) DO UPDATE SET mode = 'cursor', high_water = clock_timestamp(), "
        "scan_from = EXCLUDED.scan_from, reconciled_at = clock_timestamp(), enabled_at = now() "
        "WHERE st.mode <> 'cursor'"
    ).format(state)


def delete_state(state: sql.Identifier) -> sql.Composed:
    """Params: source; returns the mode it had."""
    return sql.SQL("DELETE FROM {} WHERE source = %s RETURNING mode").format(state)


def select_state(state: sql.Identifier) -> sql.Composed:
    """Params: source."""
    return sql.SQL("SELECT mode, high_water, enabled_at, scan_from, reconciled_at FROM {} WHERE source = %s").format(
        state)


def select_cursor_state(state: sql.Identifier) -> sql.Composed:
    """Params: source; (mode, high_water, scan_from, seconds since the last reconcile or NULL), row locked."""
    return sql.SQL(
        "SELECT mode, high_water, scan_from, extract(epoch FROM clock_timestamp() - reconciled_at) "
        "FROM {} WHERE source = %s FOR UPDATE").format(state)


def transaction_floor() -> sql.SQL:
    """(safe point, sessions hidden from us). Run it BEFORE the poll statement, in its own statement.

    The safe point is the start of the oldest transaction open in this database (ours excluded),
    or now: a row the poll's snapshot cannot see yet belongs to a transaction that started after
    it, so (clocks agreeing) its ``updated_at`` is not older. Without pg_read_all_stats the
    sessions of other roles show no ``xact_start``: they are counted, not guessed.
    """
    return sql.SQL(
        "SELECT least(clock_timestamp(), min(xact_start) FILTER (WHERE pid <> pg_backend_pid())), "
        "count(*) FILTER (WHERE state IS NULL) FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND datname = current_database()")


# ---------------------------------------------------------------- change capture: cursor and consumer


def out_of_date(table: sql.Identifier, sha: sql.Composable) -> sql.Composed:
    """For ``poll_cursor``: row ``c`` is eligible without a current vector in ``table``, or not eligible with one.

    ``sha``: the space's content hash over ``c.content``.
    """
    return sql.SQL(
        "(c.ok AND NOT EXISTS (SELECT 1 FROM {t} e WHERE e.source_id = c.id AND e.content_sha256 = {h})) "
        "OR (NOT c.ok AND EXISTS (SELECT 1 FROM {t} e WHERE e.source_id = c.id))").format(t=table, h=sha)


def poll_cursor(table: sql.Identifier, id_column: str, text_column: str, row_filter: str | None,
                updated_at_column: str, queue: sql.Identifier, out_of_date: list[sql.Composable]) -> sql.Composed:
    """Params: since (where this poll starts reading), src (source name).

    Queues rows updated at or past ``since`` (a transaction stamping ``now()`` writes exactly its
    start, which may be the safe point itself), not yet queued and out of date in some target
    (``out_of_date`` terms, OR-ed); returns (rows queued, newest ``updated_at`` seen).
    """
    return sql.SQL(
        "WITH c AS (SELECT {id} AS id, {txt} AS content, coalesce(({filt}) AND {txt} " + HAS_TEXT + ", false) AS ok, "
        "{upd} AS upd FROM {tbl} WHERE {upd} >= %(since)s::timestamptz), "
        "ins AS (INSERT INTO {q} (source, source_id, op) SELECT %(src)s, c.id::text, 'C' FROM c "
        "WHERE NOT EXISTS (SELECT 1 FROM {q} q WHERE q.source = %(src)s AND q.source_id = c.id::text) "
        "AND ({ood}) RETURNING 1) "
        "SELECT (SELECT count(*) FROM ins), (SELECT max(upd) FROM c)").format(
            id=sql.Identifier(id_column), txt=sql.Identifier(text_column), filt=row_filter_sql(row_filter),
            upd=sql.Identifier(updated_at_column), tbl=table, q=queue,
            ood=sql.SQL(" OR ").join(out_of_date or [sql.SQL("false")]))


def advance_high_water(state: sql.Identifier) -> sql.Composed:
    """Params: newest updated_at seen (NULL leaves the mark), the poll's safe point, source."""
    return sql.SQL("UPDATE {} SET high_water = greatest(high_water, %s), scan_from = %s WHERE source = %s").format(state)


def mark_reconciled(state: sql.Identifier) -> sql.Composed:
    """Params: source."""
    return sql.SQL("UPDATE {} SET reconciled_at = clock_timestamp() WHERE source = %s").format(state)


def pending_ids(pending: sql.Composable) -> sql.Composed:
    """The ids (as text) of a ``pending_rows`` query (same params)."""
    return sql.SQL("SELECT p.id_text FROM ({}) p").format(pending)


def count_null_updated_at(table: sql.Identifier, updated_at_column: str) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(table, sql.Identifier(updated_at_column))


def claim_entries(queue: sql.Identifier) -> sql.Composed:
    """Params: source, limit; entries another consumer holds are skipped."""
    return sql.SQL(
        "SELECT id, source_id FROM {} WHERE source = %s ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED").format(queue)


def cast_ids(id_type: str) -> sql.Composed:
    """Params: a list of ids as text; the distinct ids typed like the source's id column."""
    return sql.SQL("SELECT DISTINCT x::{} FROM unnest(%s::text[]) x").format(sql.SQL(id_type))


def delete_entries(queue: sql.Identifier) -> sql.Composed:
    """Params: a list of entry ids."""
    return sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(queue)


# ---------------------------------------------------------------- coverage


def count_eligible(eligible: sql.Composable) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM ({}) s").format(eligible)


def table_counts(eligible: sql.Composable, table: sql.Identifier, sha: sql.Composable) -> sql.Composed:
    """Per stored model_version (NULL: eligible rows with no vector): (eligible, stored, covered, stale, orphans).

    One FULL JOIN, grouped by version, so the version distribution comes from the same pass as the
    counts (a second GROUP BY would scan the space table again); the caller sums the groups.
    ``sha``: the content hash over ``s.content``.
    """
    return sql.SQL(
        "SELECT e.model_version, count(s.id), count(e.source_id), "
        "count(*) FILTER (WHERE s.id IS NOT NULL AND e.source_id IS NOT NULL), "
        "count(*) FILTER (WHERE s.id IS NOT NULL AND e.source_id IS NOT NULL AND e.content_sha256 <> {h}), "
        "count(*) FILTER (WHERE s.id IS NULL) "
        "FROM ({eligible}) s FULL JOIN {tbl} e ON e.source_id = s.id GROUP BY 1"
    ).format(h=sha, eligible=eligible, tbl=table)


def changed_counts(eligible: sql.Composable, table: sql.Identifier, sha: sql.Composable, id_type: str,
                   queue: sql.Identifier, refused: sql.Identifier) -> sql.Composed:
    """Params ``{"src", "space", "fp"}``; among the rows queued for the source or refused for the space,
    only: (rows, eligible, missing, stale, orphans, rows read from the source).

    ``eligible``: the source's eligible-rows subquery; ``sha``: the space's content hash over ``s0.content``.
    A row's latest queue entry, when the trigger wrote it, already says whether the row is eligible and its
    hash under the space fingerprint ``fp`` (``trigger_function_body``): the source is read by key only for
    the rest (cursor, lazy and older entries, refused rows no longer queued, spaces added after capture was
    enabled). The space table is read by key for all of them. The ids never leave the server.
    """
    return sql.SQL(
        "WITH q AS MATERIALIZED (SELECT DISTINCT ON (cq.source_id) cq.source_id AS id, cq.eligible, "
        "cq.digests ->> %(fp)s AS d FROM {q} cq WHERE cq.source = %(src)s ORDER BY cq.source_id, cq.id DESC), "
        "i AS MATERIALIZED (SELECT u.id::{idt} AS id, q.eligible, q.d, "
        "(q.eligible IS FALSE OR q.d IS NOT NULL) AS known "
        "FROM (SELECT id FROM q UNION SELECT source_id FROM {r} WHERE source = %(src)s AND space = %(space)s) u "
        "LEFT JOIN q ON q.id = u.id), "
        "c AS MATERIALIZED (SELECT coalesce(array_agg(id), '{{}}') AS every, "
        "coalesce(array_agg(id) FILTER (WHERE NOT known), '{{}}') AS probe FROM i) "
        "SELECT (SELECT count(*) FROM i), count(s.id), "
        "count(*) FILTER (WHERE s.id IS NOT NULL AND e.source_id IS NULL), "
        "count(*) FILTER (WHERE s.id IS NOT NULL AND e.source_id IS NOT NULL AND e.content_sha256 <> s.sha), "
        "count(*) FILTER (WHERE s.id IS NULL), (SELECT cardinality(probe) FROM c) "
        "FROM (SELECT s0.id, {h} AS sha FROM ({eligible}) s0 WHERE s0.id = ANY((SELECT probe FROM c)::{idt}[]) "
        "UNION ALL SELECT id, decode(d, 'hex') FROM i WHERE known AND eligible) s "
        "FULL JOIN (SELECT source_id, content_sha256 FROM {tbl} "
        "WHERE source_id = ANY((SELECT every FROM c)::{idt}[])) e "
        "ON e.source_id = s.id").format(h=sha, eligible=eligible, tbl=table, idt=sql.SQL(id_type), q=queue, r=refused)


def count_versions(table: sql.Identifier) -> sql.Composed:
    """(model_version, rows), most rows first."""
    return sql.SQL("SELECT model_version, count(*) FROM {} GROUP BY 1 ORDER BY 2 DESC").format(table)


def legacy_counts(table: sql.Identifier, column: str, text_column: str, row_filter: str | None) -> sql.Composed:
    """(eligible rows, non-NULL vectors in ``column`` among them)."""
    return sql.SQL(
        "SELECT count(*), count({v}) FROM {tbl} WHERE ({filt}) AND {t} " + HAS_TEXT
    ).format(v=sql.Identifier(column), tbl=table, filt=row_filter_sql(row_filter), t=sql.Identifier(text_column))


# ---------------------------------------------------------------- app column after a flip


def select_eligible_by_ids(eligible: sql.Composable) -> sql.Composed:
    """Params: a list of ids; (id, content) of those still eligible, in key order."""
    return sql.SQL("SELECT s.id, s.content FROM ({}) s WHERE s.id = ANY(%s) ORDER BY s.id").format(eligible)


def update_app_column(table: sql.Identifier, column: str, id_column: str, text_column: str) -> sql.Composed:
    """Params: vector, id, the text embedded; a row whose text changed since is left alone. Run with executemany."""
    return sql.SQL("UPDATE {tbl} SET {col} = %s WHERE {id} = %s AND {txt} = %s").format(
        tbl=table, col=sql.Identifier(column), id=sql.Identifier(id_column), txt=sql.Identifier(text_column))
