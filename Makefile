# The two commands of the README. Each prepares the host itself (idempotent, needs root).
VENV ?= /opt/sigvirt/venv
PY := $(VENV)/bin/python
SIGVIRT := $(VENV)/bin/sigvirt
PYTEST_ARGS ?=

.PHONY: setup test lint unit offline demo images bench clean-test

setup:
	bash tools/setup-host.sh

images: setup
	$(SIGVIRT) image build tiny
	$(SIGVIRT) image build debian

lint: setup
	$(VENV)/bin/ruff check sigvirt tests benchmarks
	$(VENV)/bin/ruff format --check sigvirt tests benchmarks
	$(VENV)/bin/mypy sigvirt tests benchmarks

# The whole suite: lint, type check, the offline tier as an unprivileged user, then every
# test, real guests under libvirt included.
test: lint offline images
	$(PY) -m pytest $(PYTEST_ARGS)

# The tier that needs neither root nor libvirt (names, records, store, regions, CLI
# refusals on a tmp store). Run by root, it runs as `nobody`, which proves it.
offline: setup
	@if [ "$$(id -u)" = 0 ] && runuser -u nobody -- test -r pyproject.toml 2>/dev/null; then \
	  echo "offline tier as nobody"; \
	  runuser -u nobody -- env PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
	    $(PY) -m pytest -m offline -p no:cacheprovider -q $(PYTEST_ARGS); \
	else \
	  $(PY) -m pytest -m offline -q $(PYTEST_ARGS); \
	fi

# Fast tests only (no guests booted).
unit: setup
	$(PY) -m pytest -m "not guest" $(PYTEST_ARGS)

demo: images
	bash tools/demo.sh

bench: images
	$(PY) benchmarks/run_all.py
