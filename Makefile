# Build and test the runnable book. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch 2.13.0 as a CPU wheel sits in /opt/wheels on the project's machines; elsewhere pip
# takes it from the index (on Linux that is the CUDA build).
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP := $(PY) -m pip install --quiet $(FIND_LINKS) -c constraints.txt
# The environment the committed notebooks are executed in, by `make notebooks` and by nbval in
# `make test`: CPU only, fixed hash seed and thread count, default (quick) preset.
# Keep equal to DETERMINISTIC_ENV in tools/notebooks.py.
DET_ENV := env -u MTGMM_PRESET CUDA_VISIBLE_DEVICES= MTGMM_DEVICE=cpu PYTHONHASHSEED=0 \
	OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
LINT_PATHS := lib tests tools
CHAPTERS ?=

export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help bootstrap book notebooks test lint format clean distclean

help:
	@echo "make book       execute every chapter and build the HTML into _build/html"
	@echo "make test       lint, unit tests, notebook pairing check, strict nbval, book build"
	@echo "make notebooks  regenerate the executed book/*.ipynb from book/*.md"
	@echo "                (CHAPTERS='notation mixture' to limit)"
	@echo "make lint       ruff check and format check;  make format  fix what ruff can"
	@echo "make clean      remove build outputs;  make distclean  also remove .venv"

bootstrap: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing the pinned stack into $(VENV) (constraints.txt)"
	@# torch first, pinned, so that resolving the rest can never pull a CUDA build
	$(PIP) torch
	$(PIP) -e ".[test,book]"
	@if $(PY) -m pip list 2>/dev/null | grep -qi '^nvidia-'; then \
		echo "error: CUDA packages were installed into $(VENV)" >&2; exit 1; fi
	@# build matplotlib's font cache now, or its first-import notice lands in a notebook output
	$(PY) -c "import matplotlib.pyplot"
	@touch $@

book: bootstrap
	$(PY) tools/build_book.py --execute
	@echo "Open $(abspath _build/html/index.html)"

notebooks: bootstrap
	$(DET_ENV) $(PY) tools/notebooks.py sync $(CHAPTERS)

lint: bootstrap
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: bootstrap
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

test: bootstrap
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(PY) -m pytest tests
	$(PY) tools/notebooks.py check
	$(DET_ENV) $(PY) -m pytest -p no:cacheprovider --nbval --nbval-current-env \
		--nbval-sanitize-with tools/nbval_sanitize.cfg --nbval-cell-timeout 600 book/*.ipynb
	$(PY) tools/build_book.py --no-execute
	@echo "Rendered the verified notebooks into $(abspath _build/html/index.html)"

clean:
	rm -rf _build .pytest_cache .ruff_cache .hypothesis .jupyter_cache
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) \
		-type d -print0 | xargs -0 rm -rf
	rm -rf lib/*.egg-info

distclean: clean
	rm -rf $(VENV)
