# The two commands of the README:
#   make demo   set everything up on a fresh machine and run the demo (the main job)
#   make test   set everything up and run lint, types and the tests
# Both create .venv, install the project, and start local PostgreSQL/Redis if they are installed but stopped.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test lint types unit soak services tools migrate install clean

demo: install services
	$(BIN)/seqproc demo

test: install tools services lint types
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# The long fault variants, and the domain property cases with more examples, new ones each run.
soak: install services
	$(BIN)/pytest tests/faults tests/unit/test_domain_properties.py tests/integration/test_domain_properties_pg.py \
	  --soak --hypothesis-profile=soak $(PYTEST_ARGS)

migrate: install services
	$(BIN)/seqproc migrate

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

# Start PostgreSQL and Redis if they are installed here but not running; say so if they are missing
# (the demo then runs on its embedded default; the service tests skip, or fail when CI is set).
services:
	@if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then \
	  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then \
	    echo "starting PostgreSQL"; \
	    pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -n 1) main start || true; \
	  else echo "PostgreSQL is not installed here (pg_ctlcluster not found)"; fi; \
	fi
	@if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then \
	  if command -v redis-server >/dev/null 2>&1; then \
	    echo "starting Redis"; mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true; \
	    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
	      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true; \
	  else echo "Redis is not installed here (redis-server not found)"; fi; \
	fi
	@for i in $$(seq 1 30); do \
	  pg_ok=1; redis_ok=1; \
	  pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || pg_ok=0; \
	  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis_ok=0; \
	  if [ $$pg_ok = 1 ] && [ $$redis_ok = 1 ]; then exit 0; fi; \
	  if ! command -v pg_isready >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then exit 0; fi; \
	  sleep 1; \
	done; echo "PostgreSQL or Redis did not come up within 30 s"

# The programs tests behind a guarantee need besides the services, as command:Debian package: wrk (the HTTP load of
# `seqproc bench --server`), openssl (the TLS broker's certificates), redis-server (the fault tests' private
# brokers), pg_ctlcluster (the PostgreSQL restart test) and chromium (the browser the example page's tests drive,
# through Playwright). Without one its tests fail in CI (CI=true) and skip elsewhere. Installed with apt-get when
# missing and this runs as root; otherwise it says how.
TOOLS := wrk:wrk openssl:openssl redis-server:redis-server redis-cli:redis-tools pg_ctlcluster:postgresql-common \
	chromium:chromium chromedriver:chromium-driver

tools:
	@missing=""; \
	for pair in $(TOOLS); do command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing"; \
	    apt-get install -y -q $$missing >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; } \
	      || echo "could not install$$missing: apt-get install -y$$missing"; \
	  else echo "not installed (their tests fail in CI):$$missing: sudo apt-get install -y$$missing"; fi; \
	fi

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
