# Two commands on a fresh machine:
#   make demo   set everything up and run the whole pipeline on the Open Clip Art Library
#   make test   set everything up and run the test suite
#   make lint   ruff (style, imports, bugbear, pyupgrade, blind except) and mypy on src/
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU build of torch lies on disk for these machines; pinning it avoids a multi-GB CUDA download.
TORCH  ?= torch==2.13.0
CLIPART := /usr/share/openclipart/svg

.PHONY: demo test lint setup clipart chromium venv bench gpu-wheels clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[test,ray]"
	touch $@

venv: $(VENV)/.installed

# The Open Clip Art Library (public domain, ~8,000 images) from Debian's packages.
clipart:
	@if [ -d $(CLIPART) ]; then echo "Open Clip Art Library: present"; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq openclipart-png openclipart-svg; \
	else echo "warning: no apt-get; install openclipart-png and openclipart-svg by hand (tests on it are skipped)"; fi

# Debian's Chromium and its driver, for the web app's browser tests (skipped when absent).
chromium:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then echo "Chromium: present"; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	else echo "warning: no apt-get; install chromium and chromium-driver by hand (browser tests are skipped)"; fi

setup: venv clipart chromium

demo: setup
	$(VENV)/bin/opencanvas demo --workspace demo-workspace

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/ingest_yfcc.py

# What benchmarks/gpu_suite.sh installs on the GPU machine (Python 3.12, torch, no diffusers, no network).
gpu-wheels: venv
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  -d benchmarks/wheels diffusers==0.42.1

clean:
	rm -rf $(VENV) demo-workspace .pytest_cache
