"""What every subcommand shares: config and database resolution, output, error handling."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

from embedding_pipeline.config import PipelineConfig, load_config
from embedding_pipeline.db.connection import Database
from embedding_pipeline.errors import (
    EmbeddingPipelineError,
    RefusedError,
    ValidationFailed,
)
from embedding_pipeline.providers.cache import cached_provider

EXIT_OK, EXIT_CHECK_FAILED, EXIT_ERROR = 0, 1, 2


class Context:
    """Lazily resolved config, database and providers for one command."""

    def __init__(self, args):
        self.args = args
        self._config = None
        self._db = None

    @property
    def config(self) -> PipelineConfig:
        if self._config is None:
            self._config = load_config(self.args.config)
        return self._config

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database.resolve()
        return self._db

    def provider(self, space: str):
        return cached_provider(self.config.space(space))


def add_json(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _default(o):
    if isinstance(o, (datetime, date)):
        return o.isoformat()
    if isinstance(o, (Decimal, Path)):
        return str(o) if isinstance(o, Path) else float(o)
    if hasattr(o, "to_json"):
        return o.to_json()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def emit(args, payload, text: Callable[[], str] | str | None = None) -> None:
    """Print JSON when --json was given, else the human text."""
    if getattr(args, "json", False):
        print(json.dumps(payload, default=_default, indent=2, ensure_ascii=False))
    elif text is not None:
        print(text() if callable(text) else text)


def run_command(args) -> int:
    ctx = Context(args)
    try:
        result = args.handler(ctx, args)
        return EXIT_OK if result is None else int(result)
    except (ValidationFailed, RefusedError) as e:
        print(f"refused: {e}" if isinstance(e, RefusedError) else f"validation failed: {e}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except EmbeddingPipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
