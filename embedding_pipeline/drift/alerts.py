"""Alerts: rows in ``<schema>.alerts`` and their delivery to a Slack-compatible webhook.

Whatever raises an alert (a failed drift check, a failed run) writes a row; delivery is a
separate step that posts every undelivered row and marks it delivered, so an unreachable
webhook delays alerts instead of losing them. Without a webhook configured the rows are the
alert (``SELECT * FROM alerts WHERE NOT delivered``). Messages carry table, space, numbers
and the fix, never document content; the webhook URL is a secret and never logged.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import psycopg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.drift import queries
from embedding_pipeline.errors import EmbeddingPipelineError

log = logging.getLogger(__name__)

SEVERITY_ICON = {"ERROR": ":red_circle:", "WARN": ":warning:", "INFO": ":information_source:"}


class WebhookError(EmbeddingPipelineError):
    """The alert webhook refused or did not answer; the alert stays undelivered."""


def webhook_url(config: PipelineConfig, env: dict[str, str] | None = None) -> str | None:
    """The URL from the environment variable named by ``drift.webhook_url_env`` (None when unset)."""
    env = os.environ if env is None else env
    return env.get(config.drift.webhook_url_env) or None


def record_alert(conn: psycopg.Connection, schema: str, *, source: str | None, space: str | None, check_name: str,
                 severity: str, message: str, details: dict | None = None) -> int:
    """Insert one alert row (in the caller's transaction); return its id."""
    return conn.execute(
        queries.insert_alert(schema),
        (source, space, check_name, severity, message, json.dumps(details or {}, default=str))).fetchone()[0]


def record_findings(conn: psycopg.Connection, schema: str, outcomes) -> list[int]:
    """One alert row per finding of the failed checks (``drift.CheckOutcome``s)."""
    return [record_alert(conn, schema, source=f.source, space=f.space, check_name=f.check, severity=f.severity,
                         message=f.message, details=f.details)
            for o in outcomes for f in o.findings]


def slack_payload(alert: dict) -> dict:
    """Slack-compatible JSON: ``text`` for notifications and plain clients, ``blocks`` for layout."""
    where = " / ".join(x for x in (alert.get("source"), alert.get("space")) if x) or "pipeline"
    head = f"{SEVERITY_ICON.get(alert['severity'], '')} {alert['severity']} {alert['check_name']} ({where})".strip()
    numbers = ", ".join(f"{k}={v}" for k, v in (alert.get("details") or {}).items() if isinstance(v, (int, float)))
    fields = [{"type": "mrkdwn", "text": f"*source*\n{alert.get('source') or '-'}"},
              {"type": "mrkdwn", "text": f"*space*\n{alert.get('space') or '-'}"}]
    blocks = [{"type": "header", "text": {"type": "plain_text", "text": head[:150]}},
              {"type": "section", "text": {"type": "mrkdwn", "text": alert["message"][:2900]}, "fields": fields}]
    if numbers:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": numbers[:2900]}]})
    return {"text": f"{head}: {alert['message']}", "blocks": blocks}


def _where(url: str) -> str:
    """scheme://host of a webhook URL: its path usually is the secret."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


def post_webhook(url: str, payload: dict, timeout: float = 10.0) -> None:
    """POST JSON with urllib; raise WebhookError on a non-2xx answer or no answer."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise WebhookError("the alert webhook URL must be http(s); fix the variable named by drift.webhook_url_env")
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (scheme checked above)
            resp.read()
    except urllib.error.HTTPError as e:
        raise WebhookError(f"alert webhook {_where(url)} answered HTTP {e.code}; the alert stays undelivered "
                           "and is retried on the next delivery") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise WebhookError(f"alert webhook {_where(url)} unreachable ({type(reason).__name__}); the alert stays "
                           "undelivered and is retried on the next delivery") from None


@dataclass
class Delivery:
    delivered: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    pending: int = 0  # undelivered rows left after this pass
    errors: list[str] = field(default_factory=list)


def pending_alerts(conn: psycopg.Connection, schema: str, limit: int = 100) -> list[dict]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(queries.select_pending_alerts(schema), (limit,)).fetchall()


def deliver_pending(conn: psycopg.Connection, schema: str, url: str | None, *, limit: int = 20,
                    timeout: float = 5.0) -> Delivery:
    """Post undelivered alerts oldest first and mark each delivered once the webhook took it.

    Rows are locked with SKIP LOCKED, so two deliverers (sensor and CLI) never post one twice.
    The first failed POST ends the pass: a down webhook is not hammered once per alert.
    """
    report = Delivery()
    if url:
        with conn.transaction():
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            rows = cur.execute(queries.select_pending_alerts(schema, lock=True), (limit,)).fetchall()
            for row in rows:
                try:
                    post_webhook(url, slack_payload(row), timeout=timeout)
                except WebhookError as e:
                    report.failed.append(row["id"])
                    report.errors.append(str(e))
                    log.warning("%s", e)
                    break
                report.delivered.append(row["id"])
            if report.delivered:
                conn.execute(queries.mark_delivered(schema), (report.delivered,))
    report.pending = conn.execute(queries.count_pending_alerts(schema)).fetchone()[0]
    conn.commit()
    return report
