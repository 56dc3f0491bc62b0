# The two commands: `make up` (the whole stack, natively) and `make test` (every suite).
# Both install what they need: system packages (as root), uv, the virtualenv.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -Eeuo pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
UV := .tools/bin/uv
PYTHON := $(shell command -v python$$(cat .python-version) 2>/dev/null)
STACK := $(CURDIR)/.venv/bin/python $(CURDIR)/deployments/native/stack.py
# Commands the native stack runs, and the Debian packages that provide them; then what only the
# tests need (speech for test audio, a browser for the page tests).
SYSTEM_COMMANDS := postgres:postgresql pgbouncer:pgbouncer redis-server:redis-server nginx:nginx-light \
	envsubst:gettext-base curl:curl psql:postgresql-client openssl:openssl wrk:wrk \
	prometheus:prometheus promtool:prometheus prometheus-postgres-exporter:prometheus-postgres-exporter \
	prometheus-redis-exporter:prometheus-redis-exporter prometheus-nginx-exporter:prometheus-nginx-exporter \
	prometheus-node-exporter:prometheus-node-exporter
TEST_COMMANDS := espeak-ng:espeak-ng chromium:chromium certbot:certbot pebble:pebble

.PHONY: help up dev down restart reload letsencrypt ps logs test test-fast test-chaos test-containers test-swarm lint audit bench bench-tasks bench-startup bench-audio manage backup restore system-deps test-deps clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

system-deps: ## install the Debian packages the native stack runs (as root)
	deployments/native/system-packages $(SYSTEM_COMMANDS)
	deployments/native/pgbouncer-exporter

test-deps: system-deps ## and those only the tests need
	deployments/native/system-packages $(TEST_COMMANDS)

$(UV):
	@test -n "$(PYTHON)" || { echo "Python $$(cat .python-version) not found (see .python-version)" >&2; exit 1; }
	$(PYTHON) -m venv .tools
	.tools/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)

.venv/.synced: $(UV) pyproject.toml uv.lock .python-version
	UV_PYTHON=$(PYTHON) UV_PYTHON_DOWNLOADS=never $(UV) sync --locked --quiet --compile-bytecode
	@touch $@

up: system-deps .venv/.synced ## start the whole stack natively; returns when every service is healthy
	STACK_MODE=production $(STACK) up

dev: system-deps .venv/.synced ## the same stack for development: DEBUG, reloading web and worker, mail in var/mail
	STACK_MODE=dev $(STACK) up

down: .venv/.synced ## stop the stack
	$(STACK) down

restart: down up ## stop, then start the stack

reload: .venv/.synced ## reload web and events without dropping a request (Gunicorn HUP: new workers, then the old stop)
	$(STACK) reload web events

letsencrypt: .venv/.synced ## obtain a Let's Encrypt certificate for SERVER_NAME (README: "Let's Encrypt")
	@command -v certbot >/dev/null || { echo "certbot is missing: apt-get install certbot" >&2; exit 1; }
	$(STACK) run -- deployments/compose/certbot/certify obtain $(ARGS)
	$(STACK) reload nginx

ps: .venv/.synced ## state and health of every service
	$(STACK) ps

logs: .venv/.synced ## follow every service's log (make logs S=web for one)
	$(STACK) logs $(S)

manage: .venv/.synced ## run manage.py with the stack's environment (make manage ARGS="createsuperuser")
	cd app && $(STACK) run -- python manage.py $(ARGS)

backup: .venv/.synced ## back up the database (pg_dump -Fc) and media now, into BACKUP_DIR (var/backups)
	$(STACK) run -- deployments/compose/backup/backup

restore: .venv/.synced ## restore a backup: make restore FILE=latest ARGS=--force (or ARGS="--db NAME --media-dir DIR")
	@test -n "$(FILE)" || { echo 'usage: make restore FILE=<backup directory, name or latest> [ARGS="--force" or "--db NAME --media-dir DIR"]' >&2; exit 1; }
	$(STACK) run -- deployments/compose/backup/restore $(ARGS) $(FILE)

lint: .venv/.synced ## ruff (lint, format), shellcheck, hadolint, mypy: .pre-commit-config.yaml on every file
	.venv/bin/pre-commit run --all-files

# The tiers are the folders of tests/ (tests/conftest.py); TESTS=tests/e2e/test_logs.py runs one file.
TESTS ?= tests/unit tests/integration tests/e2e

test: test-deps .venv/.synced lint ## lint, then the unit, integration and e2e tiers, with branch coverage of app/
	.venv/bin/python -m pytest $(TESTS) \
		--cov=app --cov-branch --cov-report=term:skip-covered --cov-report=json:test-artifacts/coverage.json \
		--durations=15 $(PYTEST_ARGS)

test-fast: test-deps .venv/.synced ## the inner loop: the unit and integration tiers (PostgreSQL, PgBouncer, Redis; no stack), no lint
	.venv/bin/python -m pytest tests/unit tests/integration $(PYTEST_ARGS)

test-chaos: test-deps .venv/.synced ## kill, restart and overload a native stack of its own (~8 min)
	TEST_STACK=chaos .venv/bin/python -m pytest tests/chaos $(PYTEST_ARGS)

test-containers: .venv/.synced ## build the images, run the compose stacks for real (a Docker Engine of its own)
	eval "$$(deployments/containers-harness/engine-up)"; \
	trap 'deployments/containers-harness/engine-down' EXIT; \
	deployments/containers-harness/base-images; \
	.venv/bin/python -m pytest tests/containers $(PYTEST_ARGS)

test-swarm: .venv/.synced ## deploy the stack on a single-node Docker Swarm of its own, roll and scale it
	eval "$$(deployments/containers-harness/engine-up)"; \
	trap 'docker swarm leave --force >/dev/null 2>&1 || true; deployments/containers-harness/engine-down' EXIT; \
	deployments/containers-harness/base-images; \
	.venv/bin/python -m pytest tests/swarm $(PYTEST_ARGS)

audit: .venv/.synced ## known vulnerabilities in the locked dependencies (pip-audit; needs PyPI's JSON API)
	$(UV) export --format requirements-txt --no-hashes --no-emit-project --quiet > .venv/requirements-audit.txt
	.venv/bin/pip-audit --requirement .venv/requirements-audit.txt --no-deps --disable-pip \
		--progress-spinner off --strict

bench: system-deps .venv/.synced ## benchmarks: the web tier (servers side by side, through nginx, open-model latency)
	.venv/bin/python benchmarks/web.py

bench-tasks: system-deps .venv/.synced ## benchmarks: Celery enqueue-to-start latency on an idle worker
	.venv/bin/python benchmarks/task_latency.py

bench-startup: system-deps .venv/.synced ## benchmarks: cold and warm start of the native stack to all-healthy
	.venv/bin/python benchmarks/startup.py

bench-audio: test-deps .venv/.synced ## benchmarks: audio processing speed and accuracy vs the ffmpeg CLI
	.venv/bin/python benchmarks/audio_speed.py

clean: .venv/.synced ## stop the stack and delete its state (STACK_DIR, var/ by default: database, media, logs, certificates)
	$(STACK) clean
