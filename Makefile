# Two set-up commands (README): `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv tools clean

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

# System tools the tests use: dciodvfy (dicom3tools) validates the DICOM SEG exports; Chromium runs the
# browser app's tests (Testing/test_browser.py, driven by Playwright with this Chromium: Playwright's own
# browser download is not used). Installed with apt-get when running as root on Debian/Ubuntu; otherwise
# (or if that fails) a note, and those tests are skipped.
tools:
	@command -v dciodvfy >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null) \
	      || echo "note: could not install dicom3tools (dciodvfy); the DICOM SEG validation tests will be skipped"; \
	  else \
	    echo "note: dciodvfy is missing; install dicom3tools (sudo apt-get install dicom3tools) to run the DICOM SEG validation tests"; \
	  fi; }
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "note: could not install chromium; the browser tests (Testing/test_browser.py) will be skipped"; \
	  else \
	    echo "note: chromium is missing; install it (sudo apt-get install chromium) to run the browser tests"; \
	  fi; }

test: $(STAMP) tools
	$(PY) -m pytest -q

# Benchmarks time ours against the reference in the same run and print ratios (not part of the tests).
bench: $(STAMP)
	$(PY) -m ProstateAIApp.bench

clean:
	rm -rf $(VENV) demo-output bench-output
