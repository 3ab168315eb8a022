# fmn-patch: every routine task is a make target. `make demo` and `make test` work on a fresh clone.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: install test test-slow lint format typecheck demo bench bench-quick fingerprint toy-model toy-sd3 patches clean

install: $(STAMP)

# torch first, pinned to the CPU wheel on this machine's disk: a bare `torch` pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check fmn_patch tests examples bench patches
	$(VENV)/bin/ruff format --check fmn_patch tests examples bench patches
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format fmn_patch tests examples bench
	$(VENV)/bin/ruff check --fix fmn_patch tests examples bench

typecheck: install
	$(VENV)/bin/mypy

demo: install
	$(PY) examples/demo.py

bench: install
	$(PY) bench/run.py --full
	$(PY) bench/train_quality.py
	$(PY) bench/edit_timing.py --threads 2
	$(PY) bench/edit_timing.py --threads 2 --arch sdxl
	$(PY) bench/edit_quality.py
	$(PY) bench/train_timing.py --threads 2
	$(PY) bench/train_cost.py
	$(PY) bench/attack_quality.py
	$(PY) bench/robust_quality.py --rounds 4 --steps 300
	$(PY) bench/correct_quality.py
	$(PY) bench/scale.py
	$(PY) bench/mmdit_sizes.py
	$(PY) bench/toy_sd3_quality.py

bench-quick: install
	$(PY) bench/run.py
	$(PY) bench/train_quality.py --quick

# Same seeds, same tensors: compare every method's patches with the pre-layout code (see BENCHMARKS.md).
fingerprint: install
	$(PY) bench/fingerprint.py --compare bench/results/fingerprint-2d7e8f9.json
	$(PY) bench/run.py --render

# Model on one core, judge alongside on the other once the VAE exists, then the card: see fmn_patch/toy/build.py.
# Then the toy MMDiT, which reuses that VAE (about an hour of one core more): see fmn_patch/toy/build_sd3.py.
toy-model: install
	$(PY) -m fmn_patch.toy.build
	$(PY) -m fmn_patch.toy.build_sd3

# The toy MMDiT alone, on the committed UNet toy's VAE.
toy-sd3: install
	$(PY) -m fmn_patch.toy.build_sd3

patches: install
	$(PY) patches/make.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
