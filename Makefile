# Two commands: `make demo` (the embedded default job) and `make test` (what CI runs).
# Both create .venv when it is missing and install the project into it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
OUT ?= out/demo
WITH_ALLOC := $(PY) -m head2toe.allocator --
PYTEST_ARGS ?=

.PHONY: install demo test test-fast test-slow bench jemalloc chromium clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) jemalloc chromium

# jemalloc makes CPU backbone forwards ~3x faster; best effort, the code falls back cleanly.
jemalloc:
	@ls /usr/lib/*/libjemalloc.so.2 >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 >/dev/null 2>&1; } || \
	  echo "note: libjemalloc2 not installed; using glibc hugetlb tunable instead"; }

# Headless Chromium renders the report and the MLflow UI in the tests (tests/test_report.py,
# tests/test_mlflow_ui.py); best effort as root with apt (Debian's package), else those tests skip.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } && \
	  command -v chromium >/dev/null; } || \
	  echo "note: chromium not installed; the browser tests skip (as root: apt-get install chromium)"

demo: install
	$(WITH_ALLOC) $(VENV)/bin/h2t demo --out $(OUT)

# The whole suite (~16 min on 2 cores): what CI runs.
test: install
	$(WITH_ALLOC) $(PY) -m pytest $(PYTEST_ARGS)

# Without the end-to-end suite (servers, killed workers): a few minutes quicker while iterating.
test-fast: install
	$(WITH_ALLOC) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(WITH_ALLOC) $(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: install
	$(WITH_ALLOC) $(PY) benchmarks/bench_core.py
	$(WITH_ALLOC) $(PY) benchmarks/bench_cache.py
	$(WITH_ALLOC) $(PY) benchmarks/bench_sweep.py

clean:
	rm -rf out .pytest_cache
