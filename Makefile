# Every target creates .venv when it is missing, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/actextract
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(CLI) train-demo --out demo/digits-cnn.pt
	$(CLI) extract --model digits-cnn --weights demo/digits-cnn.pt --dataset digits \
		--layers '*' --out demo/digits.zarr --overwrite
	$(CLI) info demo/digits.zarr

# pytest exits 5 when it collected no test: that is a broken suite, not a pass.
test: $(STAMP)
	$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check actextract tests benchmarks scripts
	$(VENV)/bin/ruff format --check actextract tests benchmarks scripts

bench: $(STAMP)
	$(PY) benchmarks/bench_extract.py

clean:
	rm -rf demo build dist *.egg-info .pytest_cache .ruff_cache
