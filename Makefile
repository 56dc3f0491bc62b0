# The two commands: `make up` (the whole stack, natively) and `make test` (every suite).
# Both install what they need: system packages (as root), uv, the virtualenv.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -Eeuo pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
UV := .tools/bin/uv
PYTHON := $(shell command -v python$$(cat .python-version) 2>/dev/null)
STACK := .venv/bin/python deployments/native/stack.py
# Commands the native stack runs, and the Debian packages that provide them.
SYSTEM_COMMANDS := postgres:postgresql pgbouncer:pgbouncer redis-server:redis-server nginx:nginx-light \
	envsubst:gettext-base curl:curl psql:postgresql-client openssl:openssl wrk:wrk espeak-ng:espeak-ng chromium:chromium

.PHONY: help up down restart ps logs test test-containers lint bench manage system-deps clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

system-deps: ## install the Debian packages the native stack runs (as root)
	@missing=(); for pair in $(SYSTEM_COMMANDS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  if [[ $$cmd == postgres ]]; then ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=($$pkg); \
	  else command -v $$cmd >/dev/null || missing+=($$pkg); fi; done; \
	if (( $${#missing[@]} )); then \
	  if [[ $$(id -u) == 0 ]]; then echo "Installing: $${missing[*]}"; apt-get update -qq; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$${missing[@]}" >/dev/null; \
	  else echo "Missing system packages: $${missing[*]}. Run as root: apt-get install $${missing[*]}" >&2; exit 1; fi; fi

$(UV):
	@test -n "$(PYTHON)" || { echo "Python $$(cat .python-version) not found (see .python-version)" >&2; exit 1; }
	$(PYTHON) -m venv .tools
	.tools/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)

.venv/.synced: $(UV) pyproject.toml uv.lock .python-version
	UV_PYTHON=$(PYTHON) UV_PYTHON_DOWNLOADS=never $(UV) sync --locked --quiet
	@touch $@

up: system-deps .venv/.synced ## start the whole stack natively; returns when every service is healthy
	$(STACK) up

down: .venv/.synced ## stop the stack
	$(STACK) down

restart: down up ## stop, then start the stack

ps: .venv/.synced ## state and health of every service
	$(STACK) ps

logs: .venv/.synced ## follow every service's log (make logs S=web for one)
	$(STACK) logs $(S)

manage: .venv/.synced ## run manage.py with the stack's environment (make manage ARGS="createsuperuser")
	cd app && ../$(STACK) run -- python manage.py $(ARGS)

lint: .venv/.synced ## ruff, shellcheck
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/shellcheck --severity=style $$(grep -rlE '^#!(/usr/bin/env bash|/bin/sh)' deployments .ci)
	.venv/bin/hadolint deployments/compose/*/Dockerfile

test: system-deps .venv/.synced ## every suite but containers: lint, unit, integration, end-to-end
	.venv/bin/python -m pytest -m "not containers" $(PYTEST_ARGS)

test-containers: .venv/.synced ## build the images, run the compose stacks for real (Podman engine)
	eval "$$(deployments/containers-harness/engine-up)"; \
	trap 'deployments/containers-harness/engine-down' EXIT; \
	deployments/containers-harness/base-images; \
	.venv/bin/python -m pytest -m containers tests/containers $(PYTEST_ARGS)

bench: system-deps .venv/.synced ## benchmarks: req/s of a DB-backed endpoint, pooled vs CONN_MAX_AGE=0
	.venv/bin/python benchmarks/db_endpoint.py

clean: down ## stop the stack and delete its state (database, logs, certificates)
	rm -rf var
