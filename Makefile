# lowlight-compile: `make demo` and `make test` set up their own virtualenv (.venv).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= ../shared/data
export LOWLIGHT_CACHE ?= $(CURDIR)/.lowlight-cache

.PHONY: setup demo test test-fast typecheck bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned, for dev/CI only: this machine has the 2.13.0 CPU wheel
	# on disk (pip find-links); an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	# [dev] includes [openvino] (openvino>=2025.1): the OpenVINO backend's tests run in CI
	$(BIN)/pip install -q -e ".[dev]"
	# static TensorRT checks only: the stubs' own dependency is the real TensorRT,
	# which cannot be installed here
	$(BIN)/pip install -q --no-deps "tensorrt-stubs==10.13.0.35.1"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	@echo "== compile: AMNet base (shipped reference weights) -> INT8 CPU bundle, verified on real low-light photos"
	$(BIN)/lowlight-compile --model amnet --config base --target cpu --precision int8 \
		--ground-truth $(DATA)/eval/clean --out bundles/demo-amnet-base-int8
	@echo "== run: enhance the shipped night frames with the bundle (no PyTorch in the runtime)"
	$(BIN)/lowlight-run bundles/demo-amnet-base-int8 --input calibration/samples --output out/demo-enhanced
	@echo ""
	@echo "bundle:        bundles/demo-amnet-base-int8/"
	@echo "verification:  bundles/demo-amnet-base-int8/verification.md"
	@echo "profile:       bundles/demo-amnet-base-int8/profile.md"
	@echo "enhanced:      out/demo-enhanced/"

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/amnet_cpu.py

clean:
	rm -rf $(VENV) bundles out .lowlight-cache .pytest_cache
