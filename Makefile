# The two commands of the README: `make demo` (the main job on embedded defaults) and `make test`.
# Both create .venv and install what is missing; running them again installs nothing new.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo
DEMO_STEPS ?= 400
DEMO_EVERY ?= 50

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
	$(BIN)/clipprobe data corpus --out $(DEMO)/corpus --num-samples 20000 --overwrite true --progress false
	rm -rf $(DEMO)/run
	CLIPPROBE_CACHE=$(abspath $(DEMO))/cache $(BIN)/clipprobe fit --config configs/fit/tiny-synthetic.yaml \
	  --data.train_data '$(DEMO)/corpus/{00000..00019}.tar' --trainer.default_root_dir $(DEMO)/run \
	  --trainer.max_steps $(DEMO_STEPS) --trainer.callbacks.init_args.every_n_steps $(DEMO_EVERY)
	$(BIN)/clipprobe plot $(DEMO)/run
	@echo "demo: probe sets in $(DEMO)/probesets (previews $(DEMO)/comco_preview.png, $(DEMO)/simco_preview.png)"
	@echo "demo: tiny CLIP trained $(DEMO_STEPS) steps in $(DEMO)/run; bias and zero-shot accuracy: $(DEMO)/run/plots/summary.png"
	@echo "demo: every curve, bias against zero-shot accuracy, the loss: $(DEMO)/run/plots/*.png"
	@echo "demo: probe records $(DEMO)/run/probes.jsonl; offline W&B run in $(DEMO)/run/wandb (wandb sync to upload)"

test: $(STAMP) system
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check clipprobe tests scripts
	$(BIN)/ruff format --check clipprobe tests scripts

clean:
	rm -rf $(DEMO) .pytest_cache
