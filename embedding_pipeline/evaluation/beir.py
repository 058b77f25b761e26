"""BEIR datasets and the project's stored evaluation sets.

A BEIR directory holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
(``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id corpus-id score`` with a header).
We read it the way BEIR's ``GenericDataLoader`` does, but stop with a ``ConfigError`` naming the
file and line instead of a bare ``KeyError`` or ``JSONDecodeError`` when a file is damaged.

Eval sets live in the project schema: ``eval_sets`` (one row per set), ``eval_queries`` and,
for labeled sets, ``eval_qrels`` whose ``doc_id`` is the source table's id as text.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from embedding_pipeline.db.connection import column_types, table_exists
from embedding_pipeline.errors import ConfigError, DatabaseError
from embedding_pipeline.evaluation import queries as statements
from embedding_pipeline.providers.base import clean_text

EVAL_DDL_LOCK = 724_311_002  # pg_advisory_xact_lock key for the eval tables' DDL
QUERY_WORDS = 12


@dataclass
class BeirDataset:
    name: str
    split: str
    corpus: dict[str, str]  # doc id -> (title + " " + text).strip()
    queries: dict[str, str]  # only the split's queries (those with qrels)
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: grade}


@dataclass
class EvalSet:
    name: str
    source: str
    kind: str  # 'labeled' or 'unlabeled'
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)


def _jsonl(path: Path, required: tuple[str, ...]):
    """Yield (line number, record) for each non-blank line, with clear errors."""
    if not path.is_file():
        raise ConfigError(f"BEIR file {path} not found")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ConfigError(f"{path}:{lineno}: expected a JSON object")
            for key in required:
                value = rec.get(key)
                ok = isinstance(value, str) or (key == "_id" and isinstance(value, int) and not isinstance(value, bool))
                if not ok:
                    raise ConfigError(f"{path}:{lineno}: missing or non-text field {key!r}")
            yield lineno, rec


def _load_qrels(path: Path) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise ConfigError(f"BEIR qrels file {path} not found")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise ConfigError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(row)}")
            qid, did, grade = (c.strip() for c in row)
            try:
                value = int(grade)
            except ValueError:
                # BEIR drops the first line blindly; we only skip it when it is the header.
                if lineno == 1:
                    continue
                raise ConfigError(f"{path}:{lineno}: score {grade!r} is not an integer") from None
            qrels.setdefault(qid, {})[did] = value
    return qrels


def load_beir(path: str | Path, split: str = "test") -> BeirDataset:
    """Read a BEIR dataset directory; queries are restricted to the split's qrels, as BEIR does."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"BEIR dataset directory {root} not found")
    corpus: dict[str, str] = {}
    corpus_file = root / "corpus.jsonl"
    for lineno, rec in _jsonl(corpus_file, ("_id",)):
        doc_id = str(rec["_id"])
        text, title = rec.get("text"), rec.get("title") or ""
        if not isinstance(text, str) or not isinstance(title, str):
            raise ConfigError(f"{corpus_file}:{lineno}: 'text' and 'title' must be strings")
        if doc_id in corpus:
            # BEIR would keep the last one silently, which changes what the qrels point at.
            raise ConfigError(f"{corpus_file}:{lineno}: duplicate _id {doc_id!r}")
        # BEIR's encoders embed (title + " " + text).strip(): an empty title leaves the text alone.
        corpus[doc_id] = (title + " " + text).strip()
    all_queries: dict[str, str] = {}
    queries_file = root / "queries.jsonl"
    for lineno, rec in _jsonl(queries_file, ("_id", "text")):
        all_queries[str(rec["_id"])] = rec["text"]
    qrels_file = root / "qrels" / f"{split}.tsv"
    qrels = _load_qrels(qrels_file)
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise ConfigError(f"{qrels_file}: {len(missing)} query id(s) not in {queries_file}, e.g. {missing[0]!r}")
    queries = {qid: all_queries[qid] for qid in qrels}
    return BeirDataset(name=root.name, split=split, corpus=corpus, queries=queries, qrels=qrels)


def load_labeled_set(name: str, queries_path: str | Path, qrels_path: str | Path | None = None) -> EvalSet:
    """Queries (BEIR ``queries.jsonl``: ``{"_id", "text"}`` per line) and optional qrels (BEIR TSV:
    query-id, corpus-id, score) as an eval set; with qrels only the judged queries are kept, as BEIR does.

    The qrels' corpus ids are the source table's ids (as text): that is what the evaluation ranks."""
    queries = {str(rec["_id"]): rec["text"] for _, rec in _jsonl(Path(queries_path), ("_id", "text"))}
    if qrels_path is None:
        return EvalSet(name=name, source="", kind="unlabeled", queries=queries)
    qrels = _load_qrels(Path(qrels_path))
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise ConfigError(f"{qrels_path}: {len(missing)} query id(s) not in {queries_path}, e.g. {missing[0]!r}")
    return EvalSet(name=name, source="", kind="labeled", queries={q: queries[q] for q in qrels}, qrels=qrels)


def import_beir_to_table(conn: psycopg.Connection, dataset: BeirDataset, schema: str, table: str) -> int:
    """Make ``schema.table (id text primary key, content text)`` hold exactly the corpus.

    Idempotent: unchanged rows are not rewritten (so change detection downstream stays quiet),
    changed rows are updated and rows no longer in the corpus deleted. Returns the row count.
    """
    target = sql.Identifier(schema, table)
    staging = sql.Identifier(f"_beir_import_{table}"[:63])
    with conn.transaction():
        conn.execute(statements.create_schema(schema))
        conn.execute(statements.create_corpus_table(target))
        cols = column_types(conn, schema, table)
        if cols.get("id") != "text" or cols.get("content") != "text":
            raise DatabaseError(f"{schema}.{table} exists but lacks text columns id and content; pick another table")
        conn.execute(statements.create_staging(staging))
        with conn.cursor().copy(statements.copy_into_staging(staging)) as copy:
            for doc_id, text in dataset.corpus.items():
                # PostgreSQL text holds neither NUL nor lone surrogates (legal as JSON escapes): cleaned as the embedders clean.
                copy.write_row((doc_id, clean_text(text)[0]))
        conn.execute(statements.upsert_from_staging(target, staging))
        conn.execute(statements.delete_missing_from_staging(target, staging))
        conn.execute(statements.drop_table(staging))
        return conn.execute(statements.count_rows(target)).fetchone()[0]


def ensure_eval_tables(conn: psycopg.Connection, project_schema: str) -> None:
    """Create the eval tables if missing (idempotent; serialised so concurrent starts do not race)."""
    with conn.transaction():
        conn.execute(statements.lock_ddl(), (EVAL_DDL_LOCK,))
        for stmt in statements.create_eval_tables(project_schema):
            conn.execute(stmt)


def store_eval_set(
    conn: psycopg.Connection,
    project_schema: str,
    name: str,
    data: BeirDataset | EvalSet | Mapping[str, str],
    *,
    source: str | None = None,
) -> EvalSet:
    """Store (or replace) an eval set: a BEIR dataset or EvalSet with qrels is 'labeled', a plain
    ``{query_id: text}`` mapping (or an EvalSet without qrels) is 'unlabeled'."""
    if isinstance(data, BeirDataset):
        queries, qrels = data.queries, data.qrels
        origin = source or f"beir:{data.name}/{data.split}"
    elif isinstance(data, EvalSet):
        queries, qrels, origin = data.queries, data.qrels, source or data.source
    elif isinstance(data, Mapping):
        queries, qrels, origin = dict(data), {}, source or "manual"
    else:
        raise TypeError(f"cannot store {type(data).__name__} as an eval set")
    if not queries:
        raise ConfigError(f"eval set {name!r} has no queries")
    stray = [q for q in qrels if q not in queries]
    if stray:
        raise ConfigError(f"eval set {name!r}: qrels name {len(stray)} query id(s) without text, e.g. {stray[0]!r}")
    kind = "labeled" if qrels else "unlabeled"
    ensure_eval_tables(conn, project_schema)
    with conn.transaction():
        # Replacing cascades to the old queries and qrels, so a re-import never mixes versions.
        conn.execute(statements.delete_eval_set(project_schema), (name,))
        conn.execute(statements.insert_eval_set(project_schema), (name, origin, kind))
        cur = conn.cursor()
        with cur.copy(statements.copy_eval_queries(project_schema)) as copy:
            for qid, text in queries.items():
                copy.write_row((name, str(qid), clean_text(str(text))[0]))
        with cur.copy(statements.copy_eval_qrels(project_schema)) as copy:
            for qid, judged in qrels.items():
                for doc_id, grade in judged.items():
                    copy.write_row((name, str(qid), str(doc_id), int(grade)))
    return EvalSet(name=name, source=origin, kind=kind, queries={str(k): v for k, v in queries.items()},
                   qrels={str(q): {str(d): int(g) for d, g in j.items()} for q, j in qrels.items()})


def load_eval_set(conn: psycopg.Connection, project_schema: str, name: str) -> EvalSet:
    row = None
    if table_exists(conn, project_schema, "eval_sets"):
        row = conn.execute(statements.select_eval_set(project_schema), (name,)).fetchone()
    if row is None:
        raise ConfigError(f"eval set {name!r} not found in {project_schema}.eval_sets; store it first")
    queries = dict(conn.execute(statements.select_eval_queries(project_schema), (name,)).fetchall())
    qrels: dict[str, dict[str, int]] = {}
    for qid, doc_id, grade in conn.execute(statements.select_eval_qrels(project_schema), (name,)):
        qrels.setdefault(qid, {})[doc_id] = grade
    return EvalSet(name=name, source=row[0], kind=row[1], queries=queries, qrels=qrels)


def query_from_text(text: str, max_words: int = QUERY_WORDS) -> str:
    """A search-like query from a document: its first sentence, at most ``max_words`` words."""
    flat = " ".join(text.split())
    first = re.split(r"(?<=[.!?])\s", flat, maxsplit=1)[0]
    return " ".join(first.split()[:max_words]).rstrip(".!?,;:")


def sample_unlabeled_from_source(
    conn: psycopg.Connection,
    schema: str,
    table: str,
    id_column: str,
    text_column: str,
    n: int,
    seed: int,
    *,
    row_filter: str | None = None,
) -> dict[str, str]:
    """``n`` queries (keyed by the source row id) derived from a seeded pseudo-random sample of rows.

    Rows are ordered by ``md5(seed || id)``, so the sample depends only on the seed and the ids,
    not on the physical order PostgreSQL returns, and the sort runs on the server.
    ``row_filter`` is the source's configured SQL expression (e.g. ``deleted_at IS NULL``).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    rows = conn.execute(statements.sample_rows(sql.Identifier(schema, table), id_column, text_column, row_filter),
                        (str(seed), n)).fetchall()
    out = {}
    for doc_id, text in rows:
        query = query_from_text(text)
        if query:
            out[doc_id] = query
    return out
