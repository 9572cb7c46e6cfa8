# mmserve — the two commands a newcomer runs are `make serve` and `make test`.
# Both create a virtual environment (unless one is active), install the pinned CPU build of torch,
# then the package. Override TORCH_SPEC to pick another build, e.g. TORCH_SPEC="torch==2.13.0+cu128".

PYTHON       ?= python3
TORCH_SPEC   ?= torch==2.13.0
VENV         ?= .venv
HOST         ?= 127.0.0.1
PORT         ?= 8000
PYTEST_ARGS  ?=

ifdef VIRTUAL_ENV
  BIN := $(VIRTUAL_ENV)/bin
else
  BIN := $(VENV)/bin
endif
PY := $(BIN)/python
STAMP_DIR := $(dir $(PY))..
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: help install install-dev browser digit-fonts test test-fast serve export-bundled train-bundled kernels bench clean

help:
	@echo "make serve   - install, export the bundled models (MultiMax and SoftMax digits twins, translator) to ONNX (once), start the server on $(HOST):$(PORT)"
	@echo "make test    - install the dev extras and run the test suite"
	@echo "make bench   - run the CPU benchmarks in benchmarks/ (op, attention, model, onnxruntime, server, ray, translation vs CTranslate2)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP_DIR)/.mmserve-base: pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	@touch $@

$(STAMP_DIR)/.mmserve-dev: pyproject.toml $(STAMP_DIR)/.mmserve-base
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

install: $(STAMP_DIR)/.mmserve-base
install-dev: $(STAMP_DIR)/.mmserve-dev

# Builds (or reuses from the cache) the fused CPU kernel so the first request does not pay for it.
# Without a compiler the op falls back to the PyTorch reference, so a failed build does not stop `serve`.
kernels: install
	$(BIN)/mmserve kernels build --allow-failure

# The playground's browser tests (tests/test_playground.py) drive Debian's chromium through its
# chromedriver. Installed when missing: CI runs as root, a developer's machine goes through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "chromium/chromedriver missing and no apt-get: tests/test_playground.py will skip (fails under CI=1)"; fi

# The digits tests render typed digits in the held-out DejaVu fonts and the Liberation training fonts
# (Debian packages; installed here when missing and apt-get is available).
DIGIT_FONT_PACKAGES := fonts-dejavu-core fonts-dejavu-extra fonts-liberation
digit-fonts:
	@if [ -f /usr/share/fonts/truetype/dejavu/DejaVuSerifCondensed-Italic.ttf ] && \
	    [ -f /usr/share/fonts/truetype/liberation/LiberationSansNarrow-Bold.ttf ]; then :; \
	elif command -v apt-get >/dev/null; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(DIGIT_FONT_PACKAGES); \
	else echo "install the fonts $(DIGIT_FONT_PACKAGES) (Debian names) for the digits tests"; exit 1; fi

test: install-dev browser digit-fonts
	$(BIN)/mmserve kernels build --allow-failure
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install-dev digit-fonts
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

export-bundled: install
	$(BIN)/mmserve export models/digits-vit --format onnx --out build/onnx/digits-vit --skip-if-current
	$(BIN)/mmserve export models/digits-vit-softmax --format onnx --out build/onnx/digits-vit-softmax --skip-if-current
	$(BIN)/mmserve export models/numbers-en-de --format onnx --out build/onnx/numbers-en-de --skip-if-current

serve: export-bundled kernels
	$(BIN)/mmserve serve --classifier build/onnx/digits-vit --model build/onnx/digits-vit-softmax \
		--translator build/onnx/numbers-en-de --backend onnxruntime --host $(HOST) --port $(PORT)

train-bundled: install-dev digit-fonts
	$(BIN)/mmserve train classifier --out models/digits-vit-softmax --attention-fn softmax --seed 0 --threads 1
	$(BIN)/mmserve train classifier --out models/digits-vit --attention-fn multimax --seed 0 --threads 1 \
		--compare-to models/digits-vit-softmax
	$(BIN)/mmserve train translator --out models/numbers-en-de

# Each script prints MultiMax/SoftMax (or server/ceiling) ratios measured side by side in one run.
bench: install-dev kernels
	$(PY) benchmarks/bench_op_cpu.py
	$(PY) benchmarks/bench_attention.py
	$(PY) benchmarks/bench_model_cpu.py
	$(PY) benchmarks/bench_onnx_cpu.py
	$(PY) benchmarks/bench_server.py
	$(PY) benchmarks/bench_ray.py
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/bench_translate.py

clean:
	rm -rf build .pytest_cache
