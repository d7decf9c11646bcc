# Two commands on a fresh machine:
#   make run    venv + install + sample data + the example pipeline on the embedded default store
#   make test   venv + install + lint + type check + a single-node SLURM (as root) + the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Luigi exits 0 on failure unless [retcode] is configured: always use ours.
export LUIGI_CONFIG_PATH := $(CURDIR)/configs/luigi.cfg
# The repository's profiles (the CI cluster's slurm-ci, rucio-demo, ...), named explicitly: profiles are never
# read from the current directory. A value already in the environment is kept.
export MLTF_FLOW_PROFILE_FILES ?= $(CURDIR)/configs/profiles.yaml

.PHONY: run install data test test-fast lint docs slurm cron chromium rucio-venv rucio-demo ui bench clean

run: install data
	$(BIN)/luigi --module pipelines Train --local-scheduler
	@echo
	@echo "Done. Runs are in $(CURDIR)/.mltf (sqlite store + artifacts). See them with:  make ui"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints.txt: the exact versions CI tests (torch==2.13.0 is the local CPU wheel on these machines).
	$(PY) -m pip install -q -c constraints.txt -e '.[example,dev,docs]'
	# The repo's example Luigi module `pipelines` is not installed (a top-level `pipelines` would shadow a
	# user's own): the repository root goes on this venv's sys.path so `luigi --module pipelines` finds it.
	$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "mltf_flow_repo.pth").write_text("$(CURDIR)\n")'
	touch $@

data: install data/jet_sample/jets_003.root

data/jet_sample/jets_003.root:
	$(PY) pipelines/jet_tagging/generate.py --out-dir data/jet_sample

lint: install
	$(BIN)/ruff check mltf_flow pipelines tests benchmarks docs/hooks
	$(BIN)/mypy

# The test environments the run asks for (pytest -E NAME, tests/environments.py): tests marked with one of
# them run, and fail if it is missing; tests of the others are skipped. As root `make test` starts SLURM and
# asks for it; it always builds .venv-rucio and asks for rucio. Add gpu on a machine with a CUDA GPU:
#   make test TEST_ENVIRONMENTS="slurm rucio gpu"
TEST_ENVIRONMENTS ?= $(if $(filter 0,$(shell id -u)),slurm rucio cron browser,rucio)

# Two pytest processes (pytest-xdist; tests/parallel.py keeps SLURM, cron and Rucio tests to one of them).
TEST_PROCESSES ?= 2

test: install lint docs slurm cron chromium rucio-venv
	$(PY) -m pytest -n $(TEST_PROCESSES) --durations=25 $(addprefix -E ,$(TEST_ENVIRONMENTS))

# A real single-node SLURM (Debian slurm-wlm + munge) for the tests marked `slurm`; needs root. Without it
# those tests are skipped unless the run asks for the slurm environment (then they fail).
slurm:
	@if [ "$$(id -u)" = 0 ]; then tests/infra/slurm.sh up; \
	else echo "not root: SLURM tests will be skipped (sudo tests/infra/slurm.sh up, then make test TEST_ENVIRONMENTS='slurm rucio')"; fi

# cron's crontab (Debian package cron) for the tests marked `cron` (schedules installed as crontab lines);
# needs root to install. The tests write a block into the user's crontab and remove it again.
cron:
	@if command -v crontab >/dev/null; then :; elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq cron >/dev/null 2>&1 || (apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cron >/dev/null)); \
	else echo "not root: cron tests will be skipped (sudo make cron)"; fi

# Debian's headless chromium for the tests marked `browser` (the MLflow UI driven by Playwright, which is told
# to use this binary: Playwright's own browser download is not reachable here); needs root to install.
chromium:
	@if command -v chromium >/dev/null; then :; elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)); \
	else echo "not root: browser tests will be skipped (sudo make chromium)"; fi

# A separate venv with the Rucio server + daemons (package `rucio`) for the tests marked `rucio`
# (tests/integration/rucio_env.py). Kept out of $(VENV): `rucio` and `rucio-clients` overlap on disk.
rucio-venv: .venv-rucio/.installed

# The example pipeline from rucio://test:jets_v1 against a local Rucio server (see docs/staging.md).
rucio-demo: install data rucio-venv
	tests/infra/rucio/demo.sh

.venv-rucio/.installed: tests/infra/rucio/requirements.txt
	$(PYTHON) -m venv .venv-rucio
	.venv-rucio/bin/python -m pip install -q -r tests/infra/rucio/requirements.txt
	touch $@

# The documentation site (mkdocs.yml) in site/: offline, and --strict so a broken link or reference fails.
# The tested snippets of the docs run in the test suite (tests/integration/test_docs_snippets.py).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test-fast: install
	$(PY) -m pytest -m "not slow"

ui: install
	$(BIN)/mltf-flow ui

# Every benchmark script in benchmarks/ (listed in benchmarks/run_all.py), then one table of ratio vs goal;
# exit code 1 if a goal was missed or a script failed. QUICK=1: each with --quick (a few minutes in all).
QUICK ?=
bench: install data
	$(PY) benchmarks/run_all.py $(if $(QUICK),--quick)

clean:
	rm -rf .mltf data/jet_sample
