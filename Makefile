# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint protos bench bench-quick gpu-check images clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/synthaug demo

# Lint first (ruff: errors, import order, bugbear, pyupgrade; mypy), then every test.
test: lint
	$(PY) -m pytest -q

# The inner loop: everything but the tests marked slow (training for more than a few seconds).
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

protos: setup
	$(PY) scripts/gen_protos.py

# Every benchmark with sizes that fit 15 minutes on a 2-core machine: one table
# (figure | value | conditions) and bench/results.json. `make bench-quick`: a smoke run.
bench: setup
	$(PY) bench/run_all.py

bench-quick: setup
	$(PY) bench/run_all.py --quick --out bench/results-quick.json

# GPU readiness check (bench/gpu_check.py): the venv's Python here, the machine's python3 on
# a GPU machine (prepare there with `python3 bench/gpu_check.py --prepare`, see README).
GPU_CHECK_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_CHECK_PY) bench/gpu_check.py

# Service images synthaug/<service>:<version> with docker or podman, whichever works
# (scripts/build-images.sh). Where no registry is reachable, a Debian base is built first
# (root and debootstrap: scripts/build-base-image.sh). IMAGES="compositor evaluator" builds
# some of them; TORCH=cpu gives gan and segmenter CPU-only torch instead of the CUDA base.
# The opt-in test: SYNTHAUG_TEST_IMAGES=1 $(PY) -m pytest tests/integration/test_images.py
IMAGES ?=
images:
	scripts/build-images.sh $(IMAGES)

clean:
	rm -rf $(VENV) .synthaug .pytest_cache
