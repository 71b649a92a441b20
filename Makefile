# Two commands do all set-up on a fresh machine:
#   make run    the whole pipeline on the embedded default (synthetic data) -> results/
#   make test   the test suite
# Both create the virtual environment on first use (torch pinned by constraints.txt).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
# make test runs the suite on this many worker processes (pytest-xdist): each test module on
# one worker, the slowest first (tests/conftest.py)
TEST_WORKERS ?= 2
PIP_FLAGS ?= --disable-pip-version-check --progress-bar off

.PHONY: run test lint venv dryrun report readme-sheet clean

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) -c constraints.txt -r requirements.txt
	$(BIN)/pip install $(PIP_FLAGS) --no-deps --no-build-isolation -e .
	# plain `import timm` on a CPU-only torch (spinepipe/_torchvision_hook.py)
	$(BIN)/python -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()['purelib'], 'spinepipe-torchvision.pth').write_text('import spinepipe._torchvision_hook\\n')"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

dryrun: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --dry-run

report: $(STAMP)
	$(BIN)/snakemake --report results/report.html

# the README's example study sheet (docs/study_sheet.png) from this run's sheets
readme-sheet: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) results/qa/studies
	$(BIN)/python -m spinepipe.qa.example results docs/study_sheet.png

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# the workflow's and the package's source checks (also run by .ci/run)
lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/ruff check .

clean:
	rm -rf results logs .snakemake
