# fmn-patch: every routine task is a make target. `make demo` and `make test` work on a fresh clone.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# Every package's exact version, transitive ones included, for CPython 3.11 on Linux x86_64: `make lock` writes it.
LOCK    := requirements.lock
LATEST  := .venv-latest
# torch's CPU build (a bare `torch` pulls a multi-GB CUDA build): its wheel lies on this machine's disk, which pip
# reads through its find-links; elsewhere, `make lock TORCH_WHEELS="--extra-index-url https://download.pytorch.org/whl/cpu"`
# and PIP_EXTRA_INDEX_URL set to the same for the install.
TORCH   := torch==2.13.0+cpu
TORCH_WHEELS ?= --find-links /opt/wheels
UPGRADE ?=

.PHONY: install lock test test-latest test-slow lint format typecheck demo ui bench bench-quick fingerprint toy-model toy-sd3 patches clean

install: $(STAMP)

# pip puts in the two pins uv cannot take itself (torch from the disk, uv to run), then uv makes .venv exactly the
# lock, removing whatever else is there, and adds this package, editable, built with the locked setuptools.
$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import platform, sys; sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64")' \
	  || { echo "make: $(LOCK) is for CPython 3.11 on Linux x86_64, not $(PYTHON); set PYTHON=python3.11, or install the ranges with: pip install -e '.[dev]'" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-deps $$(grep -E '^(torch|uv)==' $(LOCK))
	$(VENV)/bin/uv pip sync --python $(PY) $(LOCK)
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Re-resolve pyproject.toml's ranges (all extras) for the locked platform, whichever machine runs it. Pins that still
# fit are kept; UPGRADE=1 takes the newest releases (run `make test-latest` first). Review with `git diff $(LOCK)`.
lock:
	test -x $(VENV)/bin/uv || { $(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q uv; }
	echo "$(TORCH)" | $(VENV)/bin/uv pip compile -q pyproject.toml - --all-extras \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 $(TORCH_WHEELS) \
	  $(if $(UPGRADE),--upgrade) --custom-compile-command "make lock" -o $(LOCK)

# The tests are single-threaded (tests/conftest.py): pytest-xdist runs whole files on each core, up to 4 workers
# (each holds its own models), and a file's module fixtures are built once, in its worker.
XDIST   := -n auto --maxprocesses 4 --dist loadfile

test: install
	$(PY) -m pytest -q $(XDIST)

# The newest releases within pyproject.toml's ranges (torch stays the locked CPU wheel), in a venv of their own, then
# the suite: drift shows here before it reaches the lock. Maintainers run it before `make lock UPGRADE=1`; CI does not.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	grep '^torch==' $(LOCK) > $(LATEST)/torch.txt
	$(LATEST)/bin/python -m pip install -q -c $(LATEST)/torch.txt -e ".[dev]"
	$(LATEST)/bin/python tests/lockfile.py $(LOCK)
	FMNPATCH_UNLOCKED=1 $(LATEST)/bin/python -m pytest -q $(XDIST)

test-slow: install
	$(PY) -m pytest -q -m slow $(XDIST)

lint: install
	$(VENV)/bin/ruff check fmn_patch tests examples bench patches
	$(VENV)/bin/ruff format --check fmn_patch tests examples bench patches
	$(MAKE) --no-print-directory typecheck

format: install
	$(VENV)/bin/ruff format fmn_patch tests examples bench
	$(VENV)/bin/ruff check --fix fmn_patch tests examples bench

# The package, then bench/ (its scripts import each other as top-level modules, as `python bench/X.py` runs them).
typecheck: install
	$(VENV)/bin/mypy
	MYPYPATH=bench $(VENV)/bin/mypy --explicit-package-bases bench

demo: install
	$(PY) examples/demo.py

# The web page on http://127.0.0.1:7860 (or the next free port); `make ui UI_ARGS="--port 8080"` passes flags.
ui: install
	$(VENV)/bin/fmnpatch ui $(UI_ARGS)

bench: install
	$(PY) bench/run.py --full
	$(PY) bench/train_quality.py
	$(PY) bench/edit_timing.py --threads 2
	$(PY) bench/edit_timing.py --threads 2 --arch sdxl
	$(PY) bench/edit_ranks.py --threads 2
	$(PY) bench/edit_ranks.py --toy-quality
	$(PY) bench/edit_quality.py
	$(PY) bench/train_timing.py --threads 2
	$(PY) bench/train_cost.py
	$(PY) bench/attack_quality.py
	$(PY) bench/robust_quality.py --rounds 4 --steps 300
	$(PY) bench/correct_quality.py
	$(PY) bench/scale.py
	$(PY) bench/mmdit_sizes.py
	$(PY) bench/toy_sd3_quality.py
	$(PY) bench/toy_threads.py
	$(PY) bench/toy_edit_timing.py
	$(PY) bench/toy_v2_resolution.py --size 32
	$(PY) bench/install.py

bench-quick: install
	$(PY) bench/run.py
	$(PY) bench/train_quality.py --quick

# Same seeds, same tensors: compare every method's patches with the pre-layout code (see BENCHMARKS.md).
fingerprint: install
	$(PY) bench/fingerprint.py --compare bench/results/fingerprint-2d7e8f9.json
	$(PY) bench/render.py

# Model on one core, judge alongside on the other once the VAE exists, then the card: see fmn_patch/toy/build.py.
# Then the toy MMDiT, which reuses that VAE (8,000 steps of one core more): the same builder, --family sd3.
# Hours each: the UNet toy's 16,000 steps ran at 0.9 s a step on 2 shared cores.
toy-model: install
	$(PY) -m fmn_patch.toy.build
	$(PY) -m fmn_patch.toy.build --family sd3

# The toy MMDiT alone, on the committed UNet toy's VAE.
toy-sd3: install
	$(PY) -m fmn_patch.toy.build --family sd3

patches: install
	$(PY) patches/make.py

clean:
	rm -rf out $(LATEST) .pytest_cache .mypy_cache .ruff_cache
