"""Configuration: one clear error per bad key, Honcho's variables honoured, identities stable."""

from __future__ import annotations

import pytest
import yaml

from embedding_pipeline.config import PACKAGED_CONFIG, load_config
from embedding_pipeline.errors import ConfigError


def _write(tmp_path, mutate):
    raw = yaml.safe_load(PACKAGED_CONFIG.read_text())
    mutate(raw)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_packaged_config_loads_with_example_spaces():
    """The shipped file names the example spaces the README documents."""
    cfg = load_config(PACKAGED_CONFIG, env={})
    assert {"minilm", "e5-small", "mpnet", "bge-m3", "openai-3-small", "minilm-256"} <= set(cfg.spaces)
    assert cfg.spaces_for("documents") == ["e5-small", "minilm-256"]
    assert cfg.space("bge-m3").dimensions == 1024


@pytest.mark.parametrize("mutate, needle", [
    (lambda r: r["spaces"]["minilm"].update(transport="grpc"), "spaces.minilm"),
    (lambda r: r["spaces"]["minilm"].update(dimensions=-1), "spaces.minilm"),
    (lambda r: r["sources"]["documents"].update(active_space="nope"), "sources.documents.active_space: unknown space 'nope'"),
    (lambda r: r["sources"]["documents"].update(row_filter="true; DROP TABLE x"), "sources.documents.row_filter"),
    (lambda r: r["sources"]["documents"].update(colour="red"), "sources.documents.colour"),
    (lambda r: r["spaces"].update({"Bad Name": r["spaces"]["minilm"]}), "spaces.Bad Name"),
])
def test_invalid_config_names_the_key(tmp_path, mutate, needle):
    """A mistake gives one ConfigError that names the offending key."""
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, mutate), env={})
    assert needle in str(e.value)


def test_honcho_environment_describes_the_legacy_space():
    """An operator's Honcho variables override the legacy space unchanged."""
    env = {
        "EMBEDDING_MODEL_CONFIG__TRANSPORT": "openai",
        "EMBEDDING_MODEL_CONFIG__MODEL": "text-embedding-3-small",
        "EMBEDDING_VECTOR_DIMENSIONS": "1536",
        "EMBEDDING_MODEL_CONFIG__DIMENSIONS_MODE": "auto",
        "EMBEDDING_MODEL_CONFIG__OVERRIDES__BASE_URL": "http://10.0.0.7:8000/v1",
    }
    space = load_config(PACKAGED_CONFIG, env=env).space("minilm")
    assert (space.transport, space.model, space.dimensions, space.base_url) == (
        "openai", "text-embedding-3-small", 1536, "http://10.0.0.7:8000/v1")


@pytest.mark.parametrize("mode, dims, default, sends", [
    ("auto", 1536, 1536, False),   # Honcho: the default dim is not an opt-in
    ("auto", 1024, 1536, True),
    ("always", 1536, 1536, True),
    ("never", 1024, 1536, False),
])
def test_dimensions_mode_follows_honcho(tmp_path, mode, dims, default, sends):
    """`auto` forwards dimensions= only for a non-default size, as Honcho defines it."""
    cfg = load_config(PACKAGED_CONFIG, env={}).space("openai-3-small").model_copy(
        update={"dimensions_mode": mode, "dimensions": dims, "default_dimensions": default})
    assert cfg.sends_dimensions() is sends


def test_fingerprint_changes_with_identity_only():
    """Prompts or model change the fingerprint; batch size and base_url do not."""
    base = load_config(PACKAGED_CONFIG, env={}).space("e5-small")
    assert base.model_copy(update={"batch_size": 7}).fingerprint == base.fingerprint
    assert base.model_copy(update={"base_url": "http://127.0.0.1:1/v1"}).fingerprint == base.fingerprint
    assert base.model_copy(update={"query_model": "other"}).fingerprint != base.fingerprint


def test_large_dimensions_use_halfvec():
    """Past 2,000 dimensions the column is halfvec so HNSW still indexes it (e.g. 3072-d)."""
    base = load_config(PACKAGED_CONFIG, env={}).space("openai-3-small")
    assert base.storage_type == "vector"
    assert base.model_copy(update={"dimensions": 3072}).storage_type == "halfvec"


@pytest.mark.parametrize("expr, ok", [
    ("deleted_at IS NULL", True),
    ("status = 'it''s (fine'", True),
    ('"Deleted At" IS NULL AND (a OR b)', True),
    ("EXISTS (SELECT 1 FROM t WHERE t.id = id)", True),
    ("deleted_at IS NULL) OR (true", False),
    ("true) UNION SELECT id, secret FROM other WHERE (true", False),
    ("(deleted_at IS NULL", False),
    ("x = 'unterminated", False),
    ("x = $$)$$", False),
])
def test_row_filter_must_be_one_expression(tmp_path, expr, ok):
    """A filter that closes the engine's parenthesis could append SQL; it is refused at load."""
    path = _write(tmp_path, lambda r: r["sources"]["documents"].update(row_filter=expr))
    if ok:
        assert load_config(path, env={}).source("documents").row_filter == expr
    else:
        with pytest.raises(ConfigError, match="sources.documents.row_filter"):
            load_config(path, env={})
