# `make run` and `make test` are the contract with every newcomer (see README).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
HOST    ?= 127.0.0.1
PORT    ?= 8000
DEMO_UPSTREAM_PORT ?= 8787

.PHONY: run test demo bench install install-dev migrate browser clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

migrate: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py recover_runs --all

run: migrate
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/daphne -b $(HOST) -p $(PORT) fusionsite.asgi:application

# Serves the app against the project's scripted upstream, with a demo account and panel.
demo: install
	$(BIN)/python manage.py demo --host $(HOST) --port $(PORT) --upstream-port $(DEMO_UPSTREAM_PORT)

# Chromium for the browser tests: Debian's package (Playwright cannot download browsers here).
# nginx for the scaled tests, which run docs/deploy/nginx.conf in front of two Daphne processes
# (they start their own nginx in a temp dir; the package's service is not used).
browser:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	  { echo "Installing Debian's chromium for the browser tests…"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@[ -x /usr/sbin/nginx ] || \
	  { echo "Installing Debian's nginx for the scaled-deployment tests…"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }

test: install-dev browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python manage.py check
	$(BIN)/python manage.py makemigrations --check --dry-run
	FUSION_BEHIND_TLS=true DJANGO_DEBUG=false $(BIN)/python manage.py check --deploy --fail-level WARNING
	$(BIN)/pytest

bench: install-dev
	$(BIN)/python bench/ws_fanout.py

clean:
	rm -rf $(VENV) staticfiles test-artifacts .pytest_cache
