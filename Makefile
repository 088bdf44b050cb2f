# The two set-up commands of the README. Each creates a virtual environment, installs everything
# from scratch, builds the extension, and runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: demo test install cpp-test cuda-check cuda-emulation cuda-emulation-asan cuda-emulation-tsan clean

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

## test: the full CPU test suite (GPU tests skip without CUDA), C++ core tests and the CUDA kernels
## on the CPU harness included
test: install cpp-test cuda-emulation
	$(PY) -m pytest -q -m "not slow" --ignore=tests/cuda_emulation tests

cpp-test:
	cmake -S . -B build/cpp -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cpp -j2 > /dev/null
	ctest --test-dir build/cpp --output-on-failure

cuda-check: install
	PATH=$(VENV)/bin:$$PATH bash tools/check_cuda.sh

## cuda-emulation: every kernel of csrc/cuda compiled by the host compiler and run on the CPU
## harness (tests/cuda_emulation), bit for bit against the CPU ops; -asan / -tsan: the same under
## AddressSanitizer + UBSan / ThreadSanitizer (a few minutes each; not in CI)
cuda-emulation: install
	$(PY) -m pytest -q tests/cuda_emulation

cuda-emulation-asan: install
	$(PY) tests/cuda_emulation/sanitize.py address

cuda-emulation-tsan: install
	$(PY) tests/cuda_emulation/sanitize.py thread

clean:
	rm -rf build $(VENV) commcomp/*.so *.egg-info
