# Two entry points: `make demo` and `make test` (the full suite, what CI runs); `make test-fast`
# leaves out the tests marked slow (setup.cfg). Each builds .venv and installs the package itself,
# with every optional extra (explain, export, serve, openvino, tune), so the tests cover every feature.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install browser-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the package metadata changes. Every extra, so that the tests cover every feature.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test,explain,export,serve,openvino,tune,encoders]"
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

clean:
	rm -rf $(VENV) runs *.egg-info

# The docs site (docs/ + mkdocs.yml) into site/; --strict: a broken link, anchor or API reference
# fails the build. Installs the site's packages into the venv first, as test does the extras.
.PHONY: docs
DOCS_PACKAGES := "mkdocs>=1.6" "mkdocs-material>=9.5" "mkdocstrings[python]>=0.25" \
	"mkdocs-jupyter>=0.24" "nbclient>=0.10" "nbformat>=5.9" "ipykernel>=6.29"
docs: $(STAMP)
	$(BIN)/python -m pip install --quiet $(DOCS_PACKAGES)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict
