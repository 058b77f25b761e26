"""Outcome counts of the reliability tests, kept in ``test-artifacts/reliability.json``.

Tests call ``record(scenario, **counts)`` after their assertions passed, so a scenario in the
file is one that held on the last run. Several pytest sessions may share the tree, so writes
are merged under a file lock and replaced atomically. ``python -m
embedding_pipeline_tests.support.reliability_report`` prints the counts as the Markdown table that
``docs/reliability.md`` quotes.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

ARTIFACT = Path(__file__).parents[2] / "test-artifacts" / "reliability.json"


def artifact_path() -> Path:
    return Path(os.environ.get("EMBEDDING_PIPELINE_RELIABILITY_REPORT") or ARTIFACT)


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load(path: Path | None = None) -> dict:
    path = path or artifact_path()
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        data = {}
    data.setdefault("scenarios", {})
    return data


def record(scenario: str, outcome: str = "held", **counts) -> None:
    """Store (replace) one scenario's outcome and counts; values must be JSON-serializable."""
    path = artifact_path()
    with _locked(path):
        data = load(path)
        data["scenarios"][scenario] = {
            "outcome": outcome,
            "counts": counts,
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        tmp.replace(path)


def _cell(counts: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False, sort_keys=True)}" for k, v in counts.items())


def markdown(data: dict | None = None) -> str:
    data = data if data is not None else load()
    lines = ["| scenario | outcome | counts | recorded |", "|---|---|---|---|"]
    for name, s in sorted(data["scenarios"].items()):
        lines.append(f"| `{name}` | {s['outcome']} | {_cell(s['counts']).replace('|', '/')} | {s['at']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(load(Path(sys.argv[1]) if len(sys.argv) > 1 else None)))
