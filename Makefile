# The two commands of the README: `make demo` (the main job on embedded defaults) and `make test`.
# Both create .venv and install what is missing; running them again installs nothing new.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP)

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

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check clipprobe tests scripts
	$(BIN)/ruff format --check clipprobe tests scripts

clean:
	rm -rf $(DEMO) .pytest_cache
