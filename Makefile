# Two commands on a fresh machine: `make run` (the nightly batch on the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Local work runs with DEBUG on (no SECRET_KEY needed); production sets SECRET_KEY and leaves DEBUG off.
export DEBUG ?= 1
DEMO_USERS ?= 1000

.PHONY: run test install lint bench clean ops-screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo_users --count $(DEMO_USERS) --if-empty
	$(BIN)/python manage.py generate_daily_fortunes

# ruff, then the import contracts in .importlinter (the layering of core/).
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The whole suite on SQLite, and again on PostgreSQL when TEST_DATABASE_URL is set.
test: lint
	env -u DATABASE_URL $(BIN)/python -m pytest -q
	@if [ -n "$$TEST_DATABASE_URL" ]; then \
		echo "== again on PostgreSQL ($$TEST_DATABASE_URL) =="; \
		DATABASE_URL="$$TEST_DATABASE_URL" $(BIN)/python -m pytest -q; \
	else \
		echo "TEST_DATABASE_URL not set: skipped the PostgreSQL run."; \
	fi

bench: install
	$(BIN)/python bench/saju.py

# Screenshots of every /ops/ page (headless Debian chromium, a real batch against the stub) into docs/img/.
ops-screenshots: install
	OPS_SCREENSHOT_DIR=$(CURDIR)/docs/img env -u DATABASE_URL $(BIN)/python -m pytest -q \
		tests/ops/test_browser.py -rs

clean:
	rm -rf $(VENV) db.sqlite3* test-db.sqlite3*
