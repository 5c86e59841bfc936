# Quick start: `make demo` runs everything locally, `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-pg lint bench manifest validate-manifest requirements clean

# requirements-dev.txt pins every package (the service's too) with its hashes: pip checks each download.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q --require-hashes -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) app.py demo

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m mypy
	$(PY) -m pytest

# The whole suite with every service's store in PostgreSQL (a throwaway server from the machine's binaries;
# Debian: apt-get install postgresql). `make test` already runs the store tests on both back ends.
test-pg: $(VENV)/.installed
	NOTIFIER_TEST_STORE=postgresql $(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m bench

manifest: $(VENV)/.installed
	$(PY) app.py manifest build

validate-manifest: manifest
	cd build && npm install --no-audit --no-fund --ignore-scripts @microsoft/m365agentstoolkit-cli >/dev/null && \
	  npx atk validate --manifest-file ./appPackage/manifest.json --interactive false

# Recompile the lock files from requirements.in / requirements-dev.in (run with Python 3.11 on Linux x86_64;
# pass PIP_COMPILE_ARGS="--upgrade-package NAME" to move one package). pip-tools lives in its own venv.
TOOLS_VENV ?= build/pip-tools
PIP_COMPILE = $(TOOLS_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links $(PIP_COMPILE_ARGS)

requirements:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
	  { echo "make requirements: the lock files are for Python 3.11; run with PYTHON=python3.11" >&2; exit 1; }
	test -x $(TOOLS_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(TOOLS_VENV) && \
	  $(TOOLS_VENV)/bin/pip install --disable-pip-version-check -q pip-tools; }
	$(PIP_COMPILE) --output-file=requirements.txt requirements.in
	$(PIP_COMPILE) --output-file=requirements-dev.txt requirements-dev.in

clean:
	rm -rf $(VENV) build var
