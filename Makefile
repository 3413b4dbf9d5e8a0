# Quick start: `make run` (main job on the embedded default) and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RANKS ?= 2
RECIPE ?= sft_lora
ARGS ?=

.PHONY: venv run test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: on these CPU machines pip takes the local CPU wheel; a bare `torch`
	# requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/deepspeed --num_gpus $(RANKS) launcher/run.py --recipe $(RECIPE) $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/streamer.py

clean:
	rm -rf runs .pytest_cache
