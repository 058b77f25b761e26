"""Helpers for the browser tests: a real `dagster dev` on loopback and headless Chromium.

`dagster dev` runs exactly as `make dev` runs it (same DAGSTER_HOME preparation, dagster.yaml
and workspace.yaml, instance in Postgres through dagster-postgres), but against a fresh test
database and a DAGSTER_HOME in a temporary folder, so the tests never touch the developer's state.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from embedding_pipeline.db.connection import (
    DAGSTER_DATABASE_URL_ENV,
    Database,
    url_with_database,
)
from embedding_pipeline.local.dev import (
    prepare_dagster_home,
    start_dagster_dev,
    stop_process_group,
)
from embedding_pipeline_tests.support.databases import scratch_database, vector_database

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
# As root Chromium needs --no-sandbox; the networking flags keep it from calling home on a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCATION = "embedding_pipeline.definitions"


@dataclass
class DagsterUI:
    url: str
    env: dict[str, str]
    db: Database
    log: Path
    config_path: Path | None = None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            payload = json.load(resp)
        if payload.get("errors"):
            raise AssertionError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]


@contextmanager
def ui_databases(admin_url: str, home: Path) -> Iterator[tuple[Database, str]]:
    """The vector database (with pgvector) and a separate, empty database for the Dagster instance.

    The instance gets its own database rather than the server-wide `dagster` one so that runs of
    other tests (or of an external server's earlier sessions) never show up as "latest".
    """
    with scratch_database(admin_url, "t") as vectors, scratch_database(admin_url, "dg") as instance:
        db = vector_database(admin_url, vectors, home)
        # psycopg2 named explicitly, as Database.dagster_url does (dagster-postgres needs it).
        yield db, url_with_database(admin_url, instance, driver="psycopg2")


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def wait_until_serving(ui: DagsterUI, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Wait for the webserver, then for the code location to finish loading."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {proc.returncode}:\n{ui.log_tail()}")
        try:
            _get(f"{ui.url}/server_info")
            status = ui.graphql("{ workspaceOrError { __typename ... on Workspace { locationEntries "
                                "{ name loadStatus locationOrLoadError { __typename } } } } }")
            entries = status["workspaceOrError"].get("locationEntries") or []
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
                if errors:
                    raise RuntimeError(f"code location failed to load: {errors}\n{ui.log_tail()}")
                return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"dagster dev not serving {ui.url} after {timeout:.0f}s:\n{ui.log_tail()}")
        time.sleep(0.5)


@contextmanager
def running_dagster_dev(db: Database, dagster_pg_url: str, env: dict[str, str], home: Path,
                        port: int, timeout: float = 90.0) -> Iterator[DagsterUI]:
    """`dagster dev` on 127.0.0.1:port with the instance in Postgres; stopped (whole group) on exit."""
    env = dict(env, DAGSTER_HOME=str(home), **{DAGSTER_DATABASE_URL_ENV: dagster_pg_url})
    env = prepare_dagster_home(db, env)
    log = home / "dagster_dev.log"
    ui = DagsterUI(url=f"http://127.0.0.1:{port}", env=env, db=db, log=log)
    with log.open("wb") as out:
        proc = start_dagster_dev(env, "127.0.0.1", port, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until_serving(ui, proc, timeout)
            yield ui
        finally:
            stop_process_group(proc)


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def chromium_available() -> bool:
    return os.access(CHROMIUM, os.X_OK)
