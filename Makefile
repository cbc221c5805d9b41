# slm — two commands: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test install system-deps lint fmt bench soak vendor clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstalls only when a requirements file changed (a second `make run` starts in seconds).
$(STAMP): requirements.txt requirements-nodeps.txt | $(PY)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium (never a downloaded browser) plus CJK and emoji fonts so screenshots of Chinese
# text are legible. Idempotent: does nothing when they are present.
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi wqy; then \
	  echo "installing Debian chromium and fonts for browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO apt-get install -y -qq chromium fonts-wqy-zenhei fonts-noto-color-emoji >/dev/null; fi

run: install
	$(PY) manage.py serve

test: install system-deps
	DJANGO_SETTINGS_MODULE=slmsite.settings.test $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) bench/chat.py
	$(PY) bench/int8_ops.py
	$(PY) bench/chat_models.py
	$(PY) bench/sentiment.py
	$(PY) bench/annotate.py
	$(PY) bench/annotate_loop.py
	$(PY) bench/remote.py

# The production path under load and faults (bench/soak.py): needs DATABASE_URL (PostgreSQL) and REDIS_URL.
# SOAK_ARGS=--short runs each scenario for a few seconds (CI).
soak: install
	$(PY) bench/soak.py $(SOAK_ARGS)

# Refresh vendored front-end files from the npm registry (versions in static/vendor/VERSIONS).
vendor:
	tmp=$$(mktemp -d) && cd $$tmp && npm pack htmx.org@2.0.11 chart.js@4.5.1 >/dev/null && \
	  for f in *.tgz; do mkdir $${f%.tgz} && tar xzf $$f -C $${f%.tgz}; done && \
	  cp htmx.org-2.0.11/package/dist/htmx.min.js $(CURDIR)/static/vendor/htmx.min.js && \
	  cp chart.js-4.5.1/package/dist/chart.umd.min.js $(CURDIR)/static/vendor/chart.umd.min.js

clean-venv:
	rm -rf $(VENV)
