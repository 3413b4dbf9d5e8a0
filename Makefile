# Quick start: `make run` (main job on the embedded default) and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RANKS ?= 2
RECIPE ?= npo_lora
OUT ?= runs/$(RECIPE)-$(shell date +%Y%m%d-%H%M%S)
ARGS ?=

.PHONY: venv run test bench clean

# torch first and pinned: on these CPU machines pip takes the local CPU wheel; a bare `torch`
# requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The main job: train the recipe on 2 DeepSpeed ranks (CPU/gloo here), then evaluate its export
# (ASR/RR before and after the one-word attack, utility), attached to the run in MLflow.
run: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/deepspeed --num_gpus $(RANKS) launcher/run.py --recipe $(RECIPE) output_dir=$(OUT) $(ARGS)
	OMP_NUM_THREADS=1 $(VENV)/bin/mirage-ds eval --run $(OUT)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/streamer.py
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/rmu_kernel.py
	$(PY) benchmarks/rmu_step.py

clean:
	rm -rf runs .pytest_cache
