# Quick start: `make demo` runs everything locally, `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test lint bench manifest validate-manifest clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) app.py demo

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m bench

manifest: $(VENV)/.installed
	$(PY) app.py manifest build

validate-manifest: manifest
	cd build && npm install --no-audit --no-fund --ignore-scripts @microsoft/m365agentstoolkit-cli >/dev/null && \
	  npx atk validate --manifest-file ./appPackage/manifest.json --interactive false

clean:
	rm -rf $(VENV) build var
