# Two entry points for a fresh clone: `make demo` and `make test`.
# Each creates .venv with python3 -m venv when missing and installs what it needs into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-test: $(BIN)/python setup.cfg setup.py
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.installed-demo: $(BIN)/python setup.cfg setup.py
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $@

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

demo: $(VENV)/.installed-demo
	$(BIN)/python -m paramsurgery demo

bench: $(VENV)/.installed-test
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info
