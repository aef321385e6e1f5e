# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# worker processes for the suite: each takes whole files (a module's running system stays
# on one worker); 0 runs everything in pytest's own process, one file after another
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile

.PHONY: run test browser promtool test-unit test-integration test-e2e test-chaos lint bench schemas-check asyncapi install clean

$(STAMP): requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	PYTHONPATH=. $(PY) -m deploy.local_run

test: $(STAMP) browser promtool
	PYTHONPATH=. $(PY) -m pytest $(XDIST)

test-unit: $(STAMP) promtool
	PYTHONPATH=. $(PY) -m pytest tests/unit tests/contract

test-integration: $(STAMP)
	PYTHONPATH=. $(PY) -m pytest $(XDIST) tests/integration

browser:
	@bash tools/ensure-debian-tool.sh /usr/bin/chromium chromium "the browser tests"

promtool:  # and the Prometheus server of tests/e2e/test_monitoring.py, from the same package
	@bash tools/ensure-debian-tool.sh /usr/bin/promtool prometheus "the alerting rules' tests" --no-install-recommends
	@bash tools/ensure-debian-tool.sh /usr/bin/prometheus prometheus "the alerting rules' tests" --no-install-recommends

test-e2e: $(STAMP) browser promtool
	PYTHONPATH=. $(PY) -m pytest $(XDIST) tests/e2e

test-chaos: $(STAMP)
	PYTHONPATH=. $(PY) -m pytest -s tests/chaos

bench: $(STAMP)
	PYTHONPATH=. $(PY) bench/all.py $(BENCH_ARGS)

schemas-check: $(STAMP)
	PYTHONPATH=. $(PY) -m schemas.compatibility
	PYTHONPATH=. $(PY) -m schemas.asyncapi | diff -q - docs/asyncapi.json >/dev/null || \
		{ echo "docs/asyncapi.json is stale: run make asyncapi"; exit 1; }

asyncapi: $(STAMP)
	PYTHONPATH=. $(PY) -m schemas.asyncapi > docs/asyncapi.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf var .pytest_cache
