# The two commands of the README, and the few a contributor needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test check protos openapi lock dist-check clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)  ## start everything locally and print the URL and a token
	@$(BIN)/rapport up

check: $(STAMP)  ## lint, format and types: ruff and mypy (strict on every domain, the kit and the contracts)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services gateway

test: check  ## the checks, then the whole suite: unit, integration (real Postgres + services), contracts, browser
	@bash scripts/ensure-chromium.sh
	@bash scripts/ensure-debian-tool.sh tmux tmux "the terminal chat test"
	$(BIN)/python -m pytest

protos: $(STAMP)  ## regenerate the committed Python code of protos/ with the pinned grpcio-tools
	$(BIN)/python protos/generate.py
	cd protos && ../$(BIN)/buf lint

openapi: $(STAMP)  ## regenerate the committed OpenAPI document of the gateway
	$(BIN)/python -m gateway.openapi

dist-check: $(STAMP)  ## install the package as a user would (a wheel, in a scratch venv) and check the installation
	rm -rf build/dist-check
	$(BIN)/pip wheel --quiet --disable-pip-version-check --no-deps -w build/dist-check/wheel .
	$(PYTHON) -m venv build/dist-check/venv
	build/dist-check/venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt build/dist-check/wheel/*.whl
	build/dist-check/venv/bin/python -I -m services.admin

lock: $(STAMP)  ## refresh constraints.txt from the current environment
	$(BIN)/pip freeze --exclude-editable --exclude rapport > constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
