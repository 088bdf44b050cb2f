# The two set-up commands of the README. Each creates a virtual environment, installs everything
# from scratch, builds the extension, and runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: demo test install cpp-test cuda-check clean

$(VENV)/.installed: requirements.txt $(wildcard requirements/*.txt) setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	MAX_JOBS=2 $(PIP) install -q --no-build-isolation -e ".[examples,test]"
	touch $@

install: $(VENV)/.installed

## demo: 2-process torchrun training on digits with 4-bit NUQSGD (CPU/Gloo), against fp32 allreduce
demo: install
	$(VENV)/bin/torchrun --nproc_per_node=2 examples/train_digits.py --scheme nuqsgd --bits 4

## test: the full CPU test suite (GPU tests skip without CUDA), C++ core tests included
test: install cpp-test
	$(PY) -m pytest -q -m "not slow" tests

cpp-test:
	cmake -S . -B build/cpp -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cpp -j2 > /dev/null
	ctest --test-dir build/cpp --output-on-failure

cuda-check: install
	PATH=$(VENV)/bin:$$PATH bash tools/check_cuda.sh

clean:
	rm -rf build $(VENV) commcomp/*.so *.egg-info
