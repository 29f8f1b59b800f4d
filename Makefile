# Quickstart targets: `make demo` and `make test` set up .venv on first use (Python 3.10+).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

MIN_VENV ?= .venv-min

.PHONY: demo test test-min lint bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) tools/demo.py

test: $(VENV)/.installed
	$(PY) -m pytest -q

# The fast tests on the lower bounds of pyproject.toml (lightning, timm, SMP, albumentations, torchmetrics): a second
# venv holding only those, layered over $(VENV) by a .pth file, so torch and everything else stay as installed there.
test-min: $(VENV)/.installed
	rm -rf $(MIN_VENV)
	$(PYTHON) -m venv $(MIN_VENV)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$($(MIN_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/base-venv.pth"
	$(MIN_VENV)/bin/python -m pip install -q --no-deps $$($(PY) .ci/min_versions.py)
	$(MIN_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^(lightning|timm|segmentation.models.pytorch|albumentations|torchmetrics|torch) '
	$(MIN_VENV)/bin/python -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check cvsuite tools tests bench
	$(VENV)/bin/ruff format --check cvsuite tools tests bench
