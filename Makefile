# The two commands of the README: `make demo` and `make test`. Each creates .venv when it is absent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A pinned CPU build of torch is installed first, so pip never resolves torch to a multi-GB CUDA build here.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint setup clean

$(VENV)/.installed: pyproject.toml aggregation/_native.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/phalanx demo

lint: setup
	$(VENV)/bin/ruff check phalanx node gossip aggregation sim tests scripts
	$(VENV)/bin/mypy phalanx node gossip aggregation sim

test: lint
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
