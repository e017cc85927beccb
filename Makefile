# The two commands of the README. Each prepares the host itself (idempotent, needs root).
VENV ?= /opt/sigvirt/venv
PY := $(VENV)/bin/python
SIGVIRT := $(VENV)/bin/sigvirt
PYTEST_ARGS ?=

.PHONY: setup test lint unit demo images bench clean-test

setup:
	bash tools/setup-host.sh

images: setup
	$(SIGVIRT) image build tiny
	$(SIGVIRT) image build debian

lint: setup
	$(VENV)/bin/ruff check sigvirt tests benchmarks
	$(VENV)/bin/ruff format --check sigvirt tests benchmarks
	$(VENV)/bin/mypy sigvirt tests

# The whole suite: lint, type check, unit tests and real guests under libvirt.
test: lint images
	$(PY) -m pytest $(PYTEST_ARGS)

# Fast tests only (no guests booted).
unit: setup
	$(PY) -m pytest -m "not guest" $(PYTEST_ARGS)

demo: images
	bash tools/demo.sh

bench: images
	$(PY) benchmarks/run_all.py
