# Two commands on a fresh machine: `make demo` runs the product, `make test` runs the whole suite.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: install demo test test-unit bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/vigil demo

test: install
	$(PY) -m pytest -q -ra

test-unit: install
	$(PY) -m pytest -q tests/unit

bench: install
	$(PY) bench/throughput.py
	$(PY) bench/scale_out.py

clean:
	rm -rf $(VENV) .vigil .pytest_cache .hypothesis
