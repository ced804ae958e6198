# One entry point for newcomers: `make run` (quickstart) and `make test` (the suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench bench-speed bench-data bench-methods bench-mtl bench-gpu gpu-wheels figures clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/sage run recipes/quickstart.yaml

# two worker processes, a test file each at a time (module fixtures stay shared): most tests wait on
# subprocesses, servers and SLURM, so two files overlap well on two cores
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

lint: $(STAMP)
	$(BIN)/ruff check sage_cli tests bench

# step costs of ERM/SAM/SAGE only (sage bench on the standard set, written into the README)
bench-speed: $(STAMP)
	$(BIN)/python bench/speed_table.py

bench: $(STAMP)
	$(BIN)/python bench/run_benchmarks.py
	$(BIN)/python bench/report_speed.py
	$(BIN)/python bench/data_pipeline.py   # sage bench --data on a generated PACS-sized folder (227² JPEGs) → README
	$(BIN)/python bench/speed_table.py   # sage bench on small_cnn, resnet50, vit_b16, mtan → README "Speed" (~25 min on 2 cores)

# the input pipeline alone: workers vs the training process, evaluation cache vs decoding (~5 minutes) → README
bench-data: $(STAMP)
	$(BIN)/python bench/data_pipeline.py

# the GPU figures (sage bench at fp32/tf32/bf16, --data, 300-step runs with 0/4/8 workers) → bench/gpu-figures/
bench-gpu: $(STAMP)
	$(BIN)/python bench/gpu_figures.py --out bench/gpu-figures

# sage's dependencies beyond PyTorch as CPython 3.12 wheels, for a GPU machine without PyPI (bench/gpu_figures.py)
gpu-wheels: | $(BIN)/python
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl -r bench/gpu-wheels.txt

# every DG objective and optimizer on RotatedDigits, 3 seeds, through sage sweep + sage report (about 20 minutes)
bench-methods: $(STAMP)
	$(BIN)/python bench/methods_table.py

bench-mtl: $(STAMP)
	$(BIN)/python bench/mtl_table.py

# the paper's worked examples (App. C, App. D / Fig. 4, Fig. 2) and their figures under docs/ (about a minute)
figures: $(STAMP)
	$(BIN)/sage analysis appendix-c
	$(BIN)/sage analysis appendix-d --out docs
	$(BIN)/sage analysis figure-2 --out docs

clean:
	rm -rf $(VENV) mlflow.db mlruns .pytest_cache
