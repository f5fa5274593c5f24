# riffle: one command to set up and run, one to set up and test.
#   make run    set up, then run the embedded default pipeline (configs/local.yaml)
#   make test   set up, then lint, type-check and run every test (starts the Kafka broker)
#   make bench  the benchmark of the README's Performance section (riffle beside its peers)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Downloads are cached in the home folder, never in the repo.
export PIP_CACHE_DIR ?= $(HOME)/.cache/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup run test test-deps lint unit bench kafka-start kafka-stop clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

run: setup
	$(VENV)/bin/riffle run configs/local.yaml

lint: setup
	$(VENV)/bin/ruff check actors pipelines tests scripts
	$(VENV)/bin/mypy

unit: setup
	$(PY) -m pytest tests/unit pipelines actors

# System tools the tests use, from Debian's packages: kcat (a third-party Kafka client),
# PostgreSQL (the registry tests' server, run by scripts/postgres.sh) and Chromium (the
# report's test loads the page in a real headless browser); kustomize from its Go module
# when neither it nor kubectl is there.
# (Java 17 and Maven, for the Kafka broker of scripts/kafka.sh, are on every machine here.)
test-deps:
	@command -v kcat >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq kcat >/dev/null; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql >/dev/null; }
	@# kustomize renders the k8s/ overlays in the tests (kubectl has it built in).
	@command -v kustomize >/dev/null || command -v kubectl >/dev/null || { \
	  test -x $(HOME)/.cache/riffle/bin/kustomize || \
	  GOBIN=$(HOME)/.cache/riffle/bin go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0; }
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@command -v java >/dev/null && command -v mvn >/dev/null || \
	  { echo "make test: the Kafka broker needs java (17+) and mvn on PATH" >&2; exit 1; }

test: setup test-deps lint
	RIFFLE_PYTHON=$(abspath $(PY)) $(PY) -m pytest

bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) scripts/bench_peers.py

kafka-start: setup
	RIFFLE_PYTHON=$(abspath $(PY)) bash scripts/kafka.sh start

kafka-stop:
	bash scripts/kafka.sh stop

clean:
	rm -rf out .pytest_cache .ruff_cache .mypy_cache
