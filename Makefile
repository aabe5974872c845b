# Every target creates .venv when it is missing, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/actextract
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(CLI) train-demo --out demo/digits-cnn.pt --record demo/train.zarr
	$(CLI) extract --model digits-cnn --weights demo/digits-cnn.pt --dataset digits \
		--layers '*' --stats 'conv*=class-std,channel-hist' --out demo/digits.zarr --overwrite
	$(CLI) cluster demo/digits.zarr --layer pool2 --k 10 --pca 32
	$(CLI) info demo/digits.zarr
	$(CLI) render demo/digits.zarr --out demo/report
	$(CLI) render demo/train.zarr --out demo/train-report

# pytest exits 5 when it collected no test: that is a broken suite, not a pass.
test: $(STAMP)
	$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check actextract tests benchmarks scripts
	$(VENV)/bin/ruff format --check actextract tests benchmarks scripts

# The README's pictures: the demo report in headless Chromium (needs Debian's chromium).
docs: demo
	$(PY) scripts/report_browser.py demo/report/index.html --screenshot docs/report-conv1.png \
		--at layer-conv1
	$(PY) scripts/docs_pictures.py demo/report docs

bench: $(STAMP)
	$(PY) benchmarks/bench_extract.py

clean:
	rm -rf demo build dist *.egg-info .pytest_cache .ruff_cache
