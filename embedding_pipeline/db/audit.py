"""The one writer of ``<project_schema>.audit``: every switch, refusal, deletion and capture change."""

from __future__ import annotations

import getpass
import json
from datetime import datetime

from embedding_pipeline.db import queries


def who(actor: str | None) -> str:
    """The operator named on the command line, else the login name."""
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def _json_default(o):
    return o.isoformat() if isinstance(o, datetime) else str(o)


def record_audit(conn, schema: str, action: str, source: str | None, space: str | None = None,
                 actor: str | None = None, forced: bool = False, details: dict | None = None) -> int:
    """One audit row in the caller's transaction, so it commits (or not) with the change it records."""
    return conn.execute(
        queries.insert_audit(schema),
        (action, source, space, actor, forced, json.dumps(details or {}, default=_json_default)),
    ).fetchone()[0]
