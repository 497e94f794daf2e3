# The two commands of the README: `make demo` and `make test`. Both set up what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= echoimage-data
PHOTOS ?= ../shared/datasets/bsds500
# processes the test suite runs in (pytest-xdist; much of it waits on servers and
# subprocesses, so two overlap well on two cores)
TEST_WORKERS ?= 2

.PHONY: demo test venv lint bench bench-quick bench-http bench-load bench-threads bench-live bench-dedupe bench-scale bench-hard bench-scan bench-products bench-cluster faults browser postgres clean

# The last step installs perception (the benchmark's peer) without its declared
# opencv-contrib<5, whose cv2 would replace the pinned OpenCV 5: see bench/pyproject.toml
$(STAMP): pyproject.toml bench/pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,postgres,cluster]' -e './bench[peers]'
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt perception
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/echoimage --data-dir $(DATA) index build --sample
	$(BIN)/python scripts/demo_query.py $(DATA)/demo-query.jpg $(DATA)/sample/coffee.jpg
	$(BIN)/echoimage --data-dir $(DATA) query -k 5 $(DATA)/demo-query.jpg

# Debian's Chromium for the browser test (never a browser download of Playwright's own)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium with apt-get"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  || echo "warning: chromium could not be installed"; }

# Debian's PostgreSQL server for the store tests (each test session starts its own)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || { \
	  echo "installing postgresql with apt-get"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) \
	  || echo "warning: postgresql could not be installed"; }

# lint-imports: the layer contracts of pyproject.toml ([tool.importlinter])
test: $(STAMP) browser postgres
	$(BIN)/ruff check echoimage bench tests scripts
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check echoimage bench tests scripts
	$(BIN)/lint-imports --no-cache

bench: $(STAMP)
	$(BIN)/python scripts/benchmark.py $(PHOTOS) --out bench-out

bench-quick: $(STAMP)
	$(BIN)/python scripts/benchmark.py $(PHOTOS) --out bench-out --limit 100 --no-scale

bench-http: $(STAMP)
	$(BIN)/python scripts/bench_http.py $(PHOTOS) --out bench-out

# `echoimage serve` under 1, 4, 8, 16 and 64 clients over a 100k-entry catalogue (70% no-copy)
bench-load: $(STAMP)
	$(BIN)/python scripts/loadtest.py $(PHOTOS) --out bench-out

# one serving process's queries/s on 1 thread and on every core (how much holds the GIL)
bench-threads: $(STAMP)
	$(BIN)/python scripts/bench_threads.py $(PHOTOS)

bench-live: $(STAMP)
	$(BIN)/python scripts/bench_live.py $(PHOTOS) --out bench-out

bench-dedupe: $(STAMP)
	$(BIN)/python scripts/bench_dedupe.py $(PHOTOS) --out bench-out

bench-scale: $(STAMP)
	$(BIN)/python scripts/bench_scale.py $(PHOTOS) --out bench-out

# different products photographed alike (synthetic shots): every copy verdict is false
bench-products: $(STAMP)
	$(BIN)/python scripts/bench_products.py --out bench-out

bench-hard: $(STAMP)
	$(BIN)/python scripts/bench_hard.py $(PHOTOS) --out bench-out --limit 100

bench-scan: $(STAMP)
	$(BIN)/python scripts/bench_scan.py $(PHOTOS) --out bench-out

bench-cluster: $(STAMP) postgres
	$(BIN)/python scripts/bench_cluster.py $(PHOTOS) --out bench-out

faults: $(STAMP)
	$(BIN)/python scripts/faults.py --out bench-out/faults.json

clean:
	rm -rf $(DATA) bench-out test-artifacts
