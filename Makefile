# Two set-up commands (README): `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv clean

venv: $(STAMP)

# torch first and pinned: 2.13.0 is the CPU wheel on disk; an unpinned torch pulls a CUDA build.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ProstateAIApp.demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest -q

# Benchmarks time ours against the reference in the same run and print ratios (not part of the tests).
bench: $(STAMP)
	$(PY) -m ProstateAIApp.bench

clean:
	rm -rf $(VENV) demo-output bench-output
