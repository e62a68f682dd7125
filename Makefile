# Two commands do everything on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch 2.13.0 is the CPU build that lies on this machine's disk; a bare `torch` pulls a CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: test demo bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.cfg Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)" setuptools wheel ninja
	# torch_scatter ships no wheel here: it is compiled against the torch installed above
	# (ninja lets it use every core).
	MAX_JOBS=$$(nproc) $(PY) -m pip install --quiet --no-build-isolation torch_scatter
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) examples/train_au.py --out runs/demo

bench: $(STAMP)
	$(PY) benchmarks/bench_mefl.py --out benchmarks/results.json

clean:
	rm -rf $(VENV) runs build *.egg-info
