# Python engine targets (virtual environment, protocol code, engine tests).
# Included by the top-level Makefile; paths are relative to the repository root.

.PHONY: venv test-py lint-py proto

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VENV_PY := $(VENV)/bin/python
# The stamp is newer than the lock once its pins are installed, so a rerun
# costs nothing; pip's download cache is kept, so a rebuild after a pin
# change downloads only what changed (torch alone is several GB). The install
# is the gpu image's own script and lock (with --dev: the test tools too, and
# an editable install), so every test run exercises the image's install step.
VENV_STAMP := $(VENV)/.installed
ENGINE_INSTALL := deploy/docker/install-engine.sh

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml python/requirements-dev.lock $(ENGINE_INSTALL)
	PYTHON=$(PYTHON) $(ENGINE_INSTALL) --dev $(VENV)
	touch $@

test-py: venv
	$(VENV_PY) -m pytest python/tests

# bench/ is shared with other tools; only the engine's Python scripts are
# linted here, with the lock writer.
SCRIPTS_PY := bench/gpu_bench.py bench/gpu_report.py bench/engine_tracing.py mk/lock.py

lint-py: venv
	$(VENV_PY) -m ruff check python $(SCRIPTS_PY)
	$(VENV_PY) -m ruff format --check python $(SCRIPTS_PY)
	$(VENV_PY) -m mypy
	$(VENV_PY) -m mypy -p enginetest
	$(VENV_PY) -m mypy $(SCRIPTS_PY)

proto: venv
	proto/generate.sh .
