# Two entry points: `make demo` and `make test` (the full suite, what CI runs); `make test-fast`
# leaves out the tests marked slow. Each builds .venv and installs the package itself,
# with every optional extra (EXTRAS below), so the tests cover every feature.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install browser-test docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Every extra of pyproject.toml, so that the tests cover every feature.
EXTRAS := test,explain,export,serve,openvino,tune,encoders,audit,docs,lint
# A CPU-only install: `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` installs torch
# and torchvision from that wheel index first, so the package's install keeps them and skips the
# CUDA libraries (docs/install.md). Empty (the default): torch comes from the default index.
TORCH_INDEX ?=
TORCH_INSTALL = $(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet --index-url $(TORCH_INDEX) torch torchvision)

# Reinstall when the package metadata changes.
$(STAMP): $(BIN)/python pyproject.toml
	$(TORCH_INSTALL)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/skinfeat demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The core without the end-to-end, encoder-family, hostile-input and benchmark-like tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The web page in headless Chromium (Debian/Ubuntu packages; needs root or sudo for apt-get).
# The screenshot is written to runs/browser-test.png.
browser-test: $(STAMP)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update && apt-get install -y chromium chromium-driver; } || \
		{ sudo apt-get update && sudo apt-get install -y chromium chromium-driver; }
	mkdir -p runs
	SKINFEAT_SCREENSHOT=runs/browser-test.png $(BIN)/python -m pytest -q -s -rs tests/test_browser.py

# The lowest declared version of every direct dependency (uv's lowest-direct resolution) in a venv
# of its own, then the fast lane: proves the floors in pyproject.toml. Downloads old wheels.
LOWEST := .venv-lowest
LOWEST_EXTRAS := test,explain,export,serve,openvino,tune,encoders,audit
.PHONY: test-lowest lint
test-lowest:
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet uv
	$(LOWEST)/bin/uv pip install --python $(LOWEST)/bin/python --resolution lowest-direct \
		-e ".[$(LOWEST_EXTRAS)]"
	$(LOWEST)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider

# ruff and mypy, as .pre-commit-config.yaml runs them.
lint: $(STAMP)
	$(BIN)/ruff check skinfeat tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(LOWEST) runs *.egg-info

# The docs site (docs/ + mkdocs.yml) into site/; --strict: a broken link, anchor or API reference
# fails the build. The site's packages come with the `docs` extra (EXTRAS).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict
