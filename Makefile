# The two commands of the README. Each bootstraps .venv on first use (idempotent).
.PHONY: demo test venv
VENV ?= .venv

venv:
	@bash tools/bootstrap_venv.sh

demo: venv
	@$(VENV)/bin/gemma3n-edge demo

test: venv
	@$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)
