# Two entry points for a fresh clone: `make demo` and `make test`.
# Each creates .venv with python3 -m venv when missing and installs what it needs into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every pip install below runs with -c $(CONSTRAINTS): MXNet 1.9.1 does not import with
# numpy 1.24+, and an extra's dependency (matplotlib -> contourpy) would otherwise upgrade it.
CONSTRAINTS := $(VENV)/constraints.txt
PIP_INSTALL := $(BIN)/python -m pip install -q -c $(CONSTRAINTS)
# The linter: unused imports and names, redefinitions, undefined names, import order.
LINT := $(BIN)/python -m ruff check --no-cache --select F401,F811,F821,F841,I \
	--line-length 100 --config "lint.isort.known-local-folder = ['helpers', 'dist_harness', 'channel_nets']" \
	paramsurgery tests bench

.PHONY: test lint demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(CONSTRAINTS): Makefile | $(BIN)/python
	printf '%s\n' 'numpy<1.24' > $@

$(VENV)/.installed-test: $(BIN)/python $(CONSTRAINTS) setup.cfg setup.py
	$(PIP_INSTALL) -e '.[test]'
	touch $@

$(VENV)/.installed-demo: $(BIN)/python $(CONSTRAINTS) setup.cfg setup.py
	$(PIP_INSTALL) -e '.[demo]'
	touch $@

# The suite runs with TMPDIR set to a scratch folder of its own, removed when it ends: pytest's
# tmp_path folders, the doc examples' tempfile.mkdtemp() folders and whatever a killed or
# aborted subprocess leaves behind go with it (CI machines have little disk to spare).
test: $(VENV)/.installed-test
	$(LINT)
	scratch=$$(mktemp -d "$${TMPDIR:-/tmp}/paramsurgery-test.XXXXXX") && \
	TMPDIR="$$scratch" $(BIN)/python -m pytest -q; \
	rc=$$?; rm -rf "$$scratch"; exit $$rc

lint: $(VENV)/.installed-test
	$(LINT)

demo: $(VENV)/.installed-demo
	$(BIN)/python -m paramsurgery demo

# Every benchmark, twice back to back, then one table of every ratio with its target
# (one OpenMP thread unless OMP_NUM_THREADS says otherwise, as docs/ figures were measured).
bench: $(VENV)/.installed-test
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) *.egg-info
