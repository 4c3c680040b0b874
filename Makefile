# Two commands do everything:
#   make reproduce   create .venv, install avae, fetch MNIST and Fashion-MNIST, run the quick profile
#                    of every experiment and write runs/reproduce/report.md
#   make test        run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: reproduce test lint install clean

$(BIN)/avae: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, at a pinned version, so that avae's own `torch>=2.4` installs nothing more; which
	# build this gets (CPU or CUDA) depends on the index pip uses: see the README's "Installing torch"
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/avae

install: $(BIN)/avae

JOBS ?= 2

reproduce: install
	$(BIN)/avae data fetch --dataset all
	$(BIN)/avae reproduce --profile quick --out runs/reproduce --jobs $(JOBS)
	$(BIN)/avae report runs/reproduce

test: install
	$(BIN)/ruff check avae tests scripts benchmarks
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check avae tests scripts benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
