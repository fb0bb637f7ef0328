# gu1-sync. `make run` runs the whole connector on this box; `make test` runs the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test check venv dev-venv browser lint bench clean

run: venv
	./gu1-sync run

# Three test processes (pytest-xdist) that steal work from each other (the long fault tests do not end
# up queued behind one another): most of the suite's time is spent waiting (for leases to run out,
# processes to die, Redis and PostgreSQL to come back), not computing, so three share two cores well
# (measured on 2 cores: 6.0 minutes, against 8.6 with two processes a file each).
test: dev-venv browser
	$(BIN)/python -m pytest -n 3 --dist worksteal

# The console's browser tests drive Debian's chromium: installed here where we can (root, apt), else
# they are skipped, and the run says so.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt) for the console's browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
		|| { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } \
		|| echo "could not install chromium: the browser tests will be skipped"; \
	else echo "chromium is not installed (as root: apt-get install chromium): the browser tests will be skipped"; fi

check: venv
	./gu1-sync check

venv: $(VENV)/.runtime
dev-venv: $(VENV)/.dev

$(VENV)/.runtime: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "gu1-sync needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

lint: dev-venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: dev-venv
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache
