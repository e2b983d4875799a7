# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test test-all bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamp files re-run the install only when the package metadata changes.
$(VENV)/.make-core: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e .
	touch $@

$(VENV)/.make-dev: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e '.[dev]'
	touch $@

demo: $(VENV)/.make-core
	$(VENV)/bin/slimkit demo --overwrite

test: $(VENV)/.make-dev
	$(PY) -m pytest -q

test-all: $(VENV)/.make-dev
	$(PY) -m pytest -q -m ''

clean:
	rm -rf $(VENV) runs .pytest_cache
