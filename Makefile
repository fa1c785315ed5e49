# The two commands of the README: `make demo` (the main job on embedded defaults) and `make test`.
# Both create .venv and install what is missing; running them again installs nothing new.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo

.PHONY: setup system demo test test-fast lint clean

setup: $(STAMP) system

# System packages: Debian's SLURM and munge, for the SLURM tests and slurm/local (apt-get, when root and
# missing; quick when installed). Without root the SLURM tests are skipped and say why.
system:
	@slurm/local/install.sh || echo "setup: SLURM not installed (needs root and apt-get); the SLURM tests will be skipped"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/clipprobe data comco --out $(DEMO)/probesets/comco --overwrite true
	$(BIN)/clipprobe data simco --out $(DEMO)/probesets/simco --overwrite true
	$(BIN)/clipprobe data preview $(DEMO)/probesets/comco --out $(DEMO)/comco_preview.png
	$(BIN)/clipprobe data preview $(DEMO)/probesets/simco --out $(DEMO)/simco_preview.png
	@echo "demo: probe sets in $(DEMO)/probesets, preview sheets $(DEMO)/comco_preview.png and $(DEMO)/simco_preview.png"

test: $(STAMP) system
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check clipprobe tests scripts
	$(BIN)/ruff format --check clipprobe tests scripts

clean:
	rm -rf $(DEMO) .pytest_cache
