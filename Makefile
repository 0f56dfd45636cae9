# Two commands matter: `make run` (the server, offline cascade engine, http://127.0.0.1:8000)
# and `make test` (the whole suite). Both set up everything on a fresh machine first.
VENV ?= .venv
PY := $(VENV)/bin/python
# Next.js builds in the tests: no telemetry calls.
export NEXT_TELEMETRY_DISABLED := 1

.PHONY: setup run test lint bench clean web

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh clients/package-lock.json
	bash scripts/setup.sh
	@touch $@

run: setup
	$(VENV)/bin/voxgate serve

# Includes the web packages: vitest, tsc and the staleness check (tests/integration/test_web_client.py)
# and the example apps in Chromium (tests/e2e/web/); the examples `npm ci` the packed packages.
test: setup
	$(PY) -m pytest -n 3 --dist loadfile

# Rebuild the web packages and the gateway's /voxgate.js + worklets from clients/web/src.
web: setup
	cd clients && npm run build

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(VENV)/bin/voxgate bench all

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info clients/node_modules clients/*/dist clients/packs examples/*/node_modules examples/*/.next examples/*/dist
