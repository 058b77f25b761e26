"""The backups on disk: manifests, freshness checks and retention.

Only folders with a ``manifest.json`` are backups; a folder without one is a backup still being
written (or one that failed and was being removed), so nothing here touches it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from embedding_pipeline.errors import BackupError

MANIFEST_FILE = "manifest.json"


def sha256(path: Path) -> str:
    """A file's SHA-256, read in 1 MiB blocks: dumps can be far larger than memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fix_command(source: str) -> str:
    return f"embedding-pipeline backup --source {source}"


def write_manifest(path: Path, manifest: dict) -> None:
    """Write via a temporary file and os.replace, so readers never see half a manifest."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_manifest(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise BackupError(f"cannot read backup manifest {path}: {e}") from None


def _created(m: dict) -> datetime:
    ts = datetime.fromisoformat(m["created_at"])
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _table_names(m: dict) -> set[str]:
    return {f"{t['schema']}.{t['table']}" for t in m["tables"]}


def list_backups(root: Path, source: str) -> list[dict]:
    """Every readable manifest of the source, newest first, with ``path`` and ``manifest`` added."""
    folder = Path(root) / source
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        manifest = child / MANIFEST_FILE
        if child.name.startswith(".") or not manifest.is_file():
            continue
        try:
            m = json.loads(manifest.read_text())
            _created(m)
            _table_names(m)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable manifests are not backups we can vouch for
        m["path"], m["manifest"] = str(child), str(manifest)
        found.append(m)
    return sorted(found, key=_created, reverse=True)


def latest_verified(root: Path, source: str) -> dict | None:
    return next((m for m in list_backups(root, source) if m.get("verified") is True), None)


def check_backup_fresh(root: Path, source: str, max_age_hours: float,
                       required_tables: list[str] | None = None, now: datetime | None = None) -> tuple[bool, str]:
    """Is there a verified backup of the source, younger than max_age_hours, holding every
    required table ("schema.table")? Returns (ok, reason); the reason names the fix."""
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    fix = f"run `{fix_command(source)}`"
    backups = list_backups(root, source)
    verified = [m for m in backups if m.get("verified") is True]
    if not verified:
        extra = f" ({len(backups)} unverified)" if backups else ""
        return False, f"no verified backup of source '{source}' in {Path(root) / source}{extra}; {fix}"
    required = set(required_tables or [])
    covering = [m for m in verified if required <= _table_names(m)]
    if not covering:
        missing = ", ".join(sorted(required - _table_names(verified[0])))
        return False, (f"no verified backup of source '{source}' contains {missing} "
                       f"(newest verified: {verified[0]['path']}); {fix}")
    best = covering[0]
    age_h = (now - _created(best)).total_seconds() / 3600
    what = f"newest verified backup of source '{source}'" + (" holding those tables" if required else "")
    if age_h > max_age_hours:
        return False, (f"{what} is {age_h:.1f} h old (limit {max_age_hours:g} h), "
                       f"taken {best['created_at']} in {best['path']}; {fix}")
    return True, f"{what} is {age_h:.1f} h old (taken {best['created_at']}) in {best['path']}"


def apply_retention(root: Path, source: str, keep: int) -> list[Path]:
    """Delete backups beyond the newest ``keep``; the newest verified one always stays.

    Each doomed folder is first renamed to a dot-name (atomic), so a crash mid-delete leaves
    something list_backups ignores rather than a manifest pointing at half a dump."""
    if keep < 1:
        raise BackupError(f"backup.keep must be at least 1, got {keep}")
    backups = list_backups(root, source)
    keep_paths = {m["path"] for m in backups[:keep]}
    newest_verified = next((m for m in backups if m.get("verified") is True), None)
    if newest_verified:
        keep_paths.add(newest_verified["path"])
    base = (Path(root) / source).resolve()
    removed = []
    for m in backups:
        path = Path(m["path"])
        if m["path"] in keep_paths or path.resolve().parent != base:
            continue
        doomed = path.with_name(f".deleting-{path.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, doomed)
        except OSError as e:
            raise BackupError(f"could not remove old backup {path}: {e}") from None
        removed.append(path)
        # Once renamed it is no longer a backup; a failure here only leaves ignorable litter.
        shutil.rmtree(doomed, ignore_errors=True)
    return removed
