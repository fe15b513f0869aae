# Entry points. Each target bootstraps .venv on a fresh machine (torch CPU build by default).
#   make demo    the main job: ternary SNN on the embedded digits, with and without TNA (+ fp32)
#   make test    the whole test suite: C++ CPU lane, Triton lane under TRITON_INTERPRET=1, ctest
#   make bench   speed comparisons (pytest-benchmark) against the reference and peers, then
#                the LIF's paired-round ratios (benchmarks/lif_paired.py)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton
PEERS ?= snntorch spikingjelly
export MAX_JOBS ?= 2
CSRC := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/autograd/*.cpp csrc/cuda/*.cu) csrc/sources.txt setup.py
# pytest exits 5 when a lane selects no tests; that is not a failure.
PYTEST_OK = rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

.PHONY: demo demo-lif test test-cpu test-triton test-cpp bench build info clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "$(TRITON_SPEC)" numpy ninja "setuptools>=64" wheel pytest pytest-benchmark expecttest scikit-learn pillow pyyaml safetensors matplotlib tqdm nir
	touch $@

$(VENV)/.built: $(VENV)/.deps $(CSRC)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

info: build
	$(PY) -m tna_kernels.info

demo: build
	$(PY) -m tna_kernels.train.demo --out runs/demo

demo-lif: build
	$(PY) scripts/demo_lif.py

test: test-cpu test-triton test-cpp

test-cpu: build
	$(PY) -m pytest -q -m "not slow" tests; $(PYTEST_OK)

test-triton: build
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "triton and not slow" tests; $(PYTEST_OK)

test-cpp: build
	mkdir -p build
	cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" -DPython3_EXECUTABLE=$(PY) > build/cmake.log
	cmake --build build/cmake -j $(MAX_JOBS) >> build/cmake.log
	ctest --test-dir build/cmake --output-on-failure

bench: build
	$(PIP) install -q --no-deps $(PEERS)
	$(PIP) install -q loguru
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-json=build/bench.json; $(PYTEST_OK)
	$(PY) benchmarks/report.py build/bench.json
	$(PY) benchmarks/lif_paired.py --T 4 --json build/lif_paired_T4.json
	$(PY) benchmarks/lif_paired.py --T 16 --json build/lif_paired_T16.json

clean:
	rm -rf build tna_kernels/_C*.so tna_kernels/_build_config.json $(VENV)
