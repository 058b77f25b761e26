"""Smoke evidence on real local models and a real loopback server; non-local endpoints blocked unsent."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import time

import dagster as dg
import pytest

from embedding_pipeline.cli import smoke_commands
from embedding_pipeline.cli.common import run_command
from embedding_pipeline.config import OpenAISpace, load_config
from embedding_pipeline.defs.evaluation.smoke_assets import (
    SmokeConfig,
    build_smoke,
    smoke_key,
)
from embedding_pipeline.defs.resources import PipelineResource
from embedding_pipeline.errors import CloudEndpointRefused
from embedding_pipeline.evaluation.sentinels import SENTINELS, sentinel_texts
from embedding_pipeline.evaluation.smoke import (
    MIN_COSINE,
    block_reason,
    latest_smoke,
    run_smoke,
)
from embedding_pipeline.providers import build_provider
from embedding_pipeline.providers.openai_compat import OpenAIProvider

CALLS = 3  # the shared test machine is slow; latency numbers are not asserted, only their presence
KEYS = {"space", "dims", "expected_dims", "p50_ms", "p95_ms", "batch_consistent", "endpoint_class", "blocked",
        "endpoint_evidence", "model", "revision", "calls", "min_cosine", "texts", "languages", "at"}


@pytest.fixture(scope="module")
def minilm_256(provider_cache):
    config = load_config()
    return config.space("minilm-256"), provider_cache.get(config, "minilm-256")


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    sub = parser.add_subparsers(dest="command", required=True)
    smoke_commands.register(sub)
    return run_command(parser.parse_args(argv))


def no_sentinel_in(text: str) -> bool:
    return not any(t in text for t in sentinel_texts())


def test_sentinels_are_english_and_polish():
    """The issue asks for PL/EN sentinel texts; both languages must be present."""
    assert {lang for lang, _ in SENTINELS} == {"en", "pl"}
    assert any("ł" in t or "ż" in t for lang, t in SENTINELS if lang == "pl")


def test_minilm_256_in_process_is_local_right_dims_and_consistent(minilm_256):
    """The in-process model is evidence of a local endpoint, returns its 256 dims and batches consistently."""
    cfg, provider = minilm_256
    r = run_smoke("minilm-256", cfg, lambda name: provider, calls=CALLS)
    assert KEYS <= set(r)
    assert r["ok"] and not r["blocked"] and r["error"] is None
    assert r["endpoint_class"] == "local" and "in-process" in r["endpoint_evidence"]
    assert r["dims"] == r["expected_dims"] == 256
    assert r["batch_consistent"] and r["min_cosine"] >= MIN_COSINE
    assert 0 < r["p50_ms"] <= r["p95_ms"]
    assert r["calls"] == CALLS and r["texts"] == len(SENTINELS) and r["languages"] == ["en", "pl"]
    assert r["model"] == "sentence-transformers/all-MiniLM-L6-v2" and r["device"] in ("cpu", "cuda")


def test_e5_small_over_loopback_server_is_local_384_and_consistent(config):
    """An OpenAI-transport model on a loopback server is classified local from its address, 384-d, consistent."""
    provider = build_provider("e5-small", config.space("e5-small"))
    r = run_smoke("e5-small", config.space("e5-small"), lambda name: provider, calls=CALLS)
    assert r["ok"], r
    assert r["endpoint_class"] == "local" and "127.0.0.1" in r["endpoint_evidence"]
    assert r["dims"] == r["expected_dims"] == 384
    assert r["batch_consistent"] and r["min_cosine"] >= MIN_COSINE


@pytest.mark.parametrize("url, klass, setting", [("http://10.255.255.1:9/v1", "internal", {"allow_remote": False}),
                                                 ("https://api.example.com/v1", "cloud", {})])
def test_non_local_endpoint_is_blocked_before_any_request(url, klass, setting, monkeypatch):
    """Where the space does not allow the endpoint's class nothing is sent: no provider, no socket."""
    connects, built = [], []
    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: connects.append(addr) or real_connect(self, addr))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: connects.append(a) or pytest.fail("connected"))
    cfg = OpenAISpace(transport="openai", model="bge-m3", base_url=url, dimensions=1024, dimensions_mode="never",
                      **setting)
    started = time.monotonic()
    r = run_smoke("bge-m3", cfg, lambda name: built.append(name), calls=CALLS)
    assert time.monotonic() - started < 5
    assert r["blocked"] and not r["ok"] and r["endpoint_class"] == klass
    assert ("allow_remote: true" if klass == "internal" else "allow_cloud: true") in r["reason"]
    assert "nothing was sent" in r["reason"]
    assert r["dims"] is None and r["p50_ms"] is None
    assert built == [] and connects == []


def test_endpoint_classes_have_their_own_settings():
    """Internal (private network) is allowed unless `allow_remote: false`; cloud (a public provider) only
    with `allow_cloud: true`; local always. The smoke and the provider apply the same rule."""
    cfg = OpenAISpace(transport="openai", model="m", base_url="https://api.example.com/v1", dimensions=8)
    assert block_reason("x", cfg, "internal", "private") is None  # the default: an in-cluster server is fine
    assert "allow_cloud: true" in block_reason("x", cfg, "cloud", "public")
    assert block_reason("x", cfg.model_copy(update={"allow_cloud": True}), "cloud", "public") is None
    local_only = cfg.model_copy(update={"allow_remote": False})
    assert "allow_remote: false" in block_reason("x", local_only, "internal", "private")
    assert block_reason("x", local_only, "local", "loopback") is None
    # allow_cloud does not open internal endpoints of a local-only space: each class has its own setting.
    assert block_reason("x", local_only.model_copy(update={"allow_cloud": True}), "internal", "private")
    with pytest.raises(CloudEndpointRefused, match="allow_remote"):
        OpenAIProvider("x", OpenAISpace(transport="openai", model="m", base_url="http://10.255.255.1:9/v1",
                                        dimensions=8, allow_remote=False))


def test_dimension_mismatch_is_reported_as_a_failed_smoke(config):
    """A server answering with another dimension is a failed smoke with the numbers, not a crash."""
    cfg = config.space("e5-small").model_copy(update={"dimensions": 256})
    r = run_smoke("e5-small", cfg, lambda name: build_provider(name, cfg), calls=CALLS)
    assert not r["ok"] and not r["blocked"]
    assert "384-d" in r["error"] and "256-d" in r["error"]
    assert r["dims"] is None and r["expected_dims"] == 256


def test_cli_json_logs_and_stored_row_hold_no_sentinel_text(db, config_path, capsys, caplog):
    """The smoke output is metadata only: no sentinel text in the JSON, the logs or the database row."""
    caplog.set_level(logging.DEBUG)
    assert cli(["--config", str(config_path), "smoke", "--space", "e5-small", "--calls", str(CALLS), "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["ok"] and result["space"] == "e5-small" and result["dims"] == 384
    assert no_sentinel_in(out.out) and no_sentinel_in(out.err) and no_sentinel_in(caplog.text)
    assert "smoke e5-small: ok" in caplog.text
    with db.connect() as conn:
        stored = latest_smoke(conn, "embedding_pipeline", "e5-small")
    assert stored == result and no_sentinel_in(json.dumps(stored))


def test_cli_blocked_space_exits_1_and_records_the_block(db, config_path, capsys, tmp_path):
    """The packaged bge-m3 space (internal Ollama) kept local-only by `allow_remote: false` is blocked:
    exit 1, JSON says why, row stored."""
    import yaml

    raw = yaml.safe_load(config_path.read_text())
    raw["spaces"]["bge-m3"]["allow_remote"] = False
    local_only = tmp_path / "local-only.yaml"
    local_only.write_text(yaml.safe_dump(raw))
    assert cli(["--config", str(local_only), "smoke", "--space", "bge-m3", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["blocked"] is True and result["endpoint_class"] == "internal"
    assert "ollama.internal" in result["endpoint_evidence"] and "allow_remote" in result["reason"]
    with db.connect() as conn:
        assert latest_smoke(conn, "embedding_pipeline", "bge-m3")["blocked"] is True


def test_asset_materializes_metadata_without_sentinel_text(db, config, config_path):
    """One smoke asset per configured space; its metadata and check carry numbers, never the texts."""
    resource = PipelineResource(config_path=str(config_path))
    defs = dg.Definitions.merge(build_smoke(config), dg.Definitions(resources={"pipeline": resource}))
    assert {a.key for a in defs.assets} == {smoke_key(s) for s in config.spaces}
    asset = defs.resolve_assets_def(smoke_key("e5-small"))
    result = dg.materialize([asset], run_config=dg.RunConfig(ops={"smoke__smoke_e5_small": SmokeConfig(calls=CALLS)}),
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    md = result.asset_materializations_for_node("smoke__smoke_e5_small")[0].metadata
    assert md["dims"].value == 384 and md["endpoint_class"].value == "local" and md["batch_consistent"].value
    assert md["p95_ms"].value >= md["p50_ms"].value > 0
    assert no_sentinel_in(json.dumps({k: str(v.value) for k, v in md.items()}))
    checks = result.get_asset_check_evaluations()
    assert [c.passed for c in checks] == [True]
    with db.connect() as conn:
        assert latest_smoke(conn, "embedding_pipeline", "e5-small")["ok"] is True
