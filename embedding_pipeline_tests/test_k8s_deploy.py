"""The Kubernetes deployment under deploy/k8s, validated by Dagster's and dagster_k8s's own config parsers:
a typo in the run launcher, the executor's run config or a step's `dagster-k8s/config` tag fails here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInvalidConfigError
from dagster._config import process_config, validate_config
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.job import USER_DEFINED_K8S_CONFIG_KEY, get_user_defined_k8s_config
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict
from kubernetes.client import V1Container, V1PodSpec

from embedding_pipeline.config import OpenAISpace, load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "k8s"


def _load(name: str):
    return list(yaml.safe_load_all((DEPLOY / name).read_text()))


def _launcher_errors(config: dict) -> list[str]:
    result = process_config(K8sRunLauncher.config_type(), config)
    return [] if result.success else [e.message for e in result.errors]


def _executor_errors(config: dict) -> list[str]:
    result = validate_config(k8s_job_executor.config_schema.config_type, config)
    return [] if result.success else [e.message for e in result.errors]


def _step_pod(tags: dict[str, str]):
    """What the executor builds a step's pod from: dagster_k8s's parser, then the kubernetes models."""
    user = get_user_defined_k8s_config(tags)
    container = k8s_model_from_dict(V1Container, k8s_snake_case_dict(V1Container, {"name": "step", **user.container_config}))
    pod = k8s_model_from_dict(V1PodSpec, k8s_snake_case_dict(V1PodSpec, {"containers": [], **user.pod_spec_config}))
    return container, pod


def test_the_run_launcher_config_is_valid_and_a_typo_fails():
    [instance] = _load("dagster-instance.yaml")
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert _launcher_errors(launcher["config"]) == []
    assert _launcher_errors({**launcher["config"], "env_secret": ["x"]})  # the key is env_secrets


def test_the_executor_run_config_is_valid_and_a_typo_fails():
    [run_config] = _load("executor.yaml")
    config = run_config["execution"]["config"]
    assert _executor_errors(config) == []
    assert _executor_errors({**config, "max_concurent": 8})
    assert _executor_errors({**config, "max_concurrent": "eight"})


def test_the_gpu_step_tags_give_a_gpu_pod_and_a_typo_fails():
    [tags] = _load("gpu-step-tags.yaml")
    encoded = {USER_DEFINED_K8S_CONFIG_KEY: json.dumps(tags[USER_DEFINED_K8S_CONFIG_KEY])}
    container, pod = _step_pod(encoded)
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert pod.tolerations[0].key == "nvidia.com/gpu"
    bad = json.loads(encoded[USER_DEFINED_K8S_CONFIG_KEY])
    bad["container_config"]["resorces"] = bad["container_config"].pop("resources")
    with pytest.raises(Exception, match="resorces"):
        _step_pod({USER_DEFINED_K8S_CONFIG_KEY: json.dumps(bad)})
    with pytest.raises(DagsterInvalidConfigError):
        _step_pod({USER_DEFINED_K8S_CONFIG_KEY: json.dumps({"pod_spec": {}})})  # the key is pod_spec_config


def test_every_configured_api_key_has_a_secret():
    """Each OpenAI-compatible space of the packaged config finds its `api_key_env` in the Secret the pods mount."""
    [instance] = _load("dagster-instance.yaml")
    secrets = {d["metadata"]["name"]: d for d in _load("secrets.yaml")}
    assert set(instance["run_launcher"]["config"]["env_secrets"]) <= set(secrets)
    [executor] = _load("executor.yaml")
    assert set(executor["execution"]["config"]["env_secrets"]) <= set(secrets)
    keys = set(secrets["embedding-pipeline-model-keys"]["stringData"])
    needed = {s.api_key_env for s in load_config(env={}).spaces.values() if isinstance(s, OpenAISpace)}
    assert needed and needed <= keys, f"missing from secrets.yaml: {sorted(needed - keys)}"
