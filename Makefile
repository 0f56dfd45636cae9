# Two commands matter: `make run` (the server, offline cascade engine, http://127.0.0.1:8000)
# and `make test` (the whole suite). Both set up everything on a fresh machine first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	@touch $@

run: setup
	$(VENV)/bin/voxgate serve

test: setup
	$(PY) -m pytest -n 3 --dist loadfile

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(VENV)/bin/voxgate bench all

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
