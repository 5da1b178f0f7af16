# subtune: `make test` (set-up, data, tests) and `make reproduce` (set-up, data, the workflow).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
CORES  ?= all

.PHONY: setup data test reproduce clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
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

test: setup data
	$(BIN)/python -m pytest -q

reproduce: setup data
	$(BIN)/snakemake --cores $(CORES)

clean:
	rm -rf .snakemake results logs benchmarks
