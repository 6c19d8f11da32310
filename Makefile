# lis: the two commands a user needs are `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
INSTALL_INPUTS := requirements.txt requirements-compile.txt requirements-dev.txt constraints.txt pyproject.toml scripts/install.sh

# TVM's tuning log lookup would otherwise try the network.
export TOPHUB_LOCATION := NONE
# Ray's usage statistics reporting is off for every command run from here.
export RAY_USAGE_STATS_ENABLED := 0

# What serving needs installed: the runtimes, and on x86_64 TVM's compiler for the demo
# detectors. An aarch64 board gets the demo models prebuilt (models/aarch64, docs/devices.md).
SERVE_LEVEL := $(if $(filter aarch64,$(shell uname -m)),runtime,compile)

.PHONY: run test test-aarch64 bench bench-compile models eval-models train-models install install-dev clean

## run: install, build the demo models if missing, serve the demo services
run: $(VENV)/.installed-$(SERVE_LEVEL)
	$(BIN)/lis models build
	$(BIN)/lis up

## test: install the dev extras, check the layer contracts, run the whole suite
test: $(VENV)/.installed-dev
	$(BIN)/lint-imports --config .importlinter
	$(BIN)/python -m pytest

## test-aarch64: the emulated aarch64 board (root on x86_64 Debian 12; cached in build/aarch64/): docs/devices.md
test-aarch64: $(VENV)/.installed-dev
	VENV=$(VENV) scripts/aarch64/test.sh

## bench: serving figures, the demo stack's footprint and compiled vs MXNet, written to docs/benchmarks.md (not a test)
bench: $(VENV)/.installed-dev
	$(BIN)/lis models build
	$(BIN)/python -m benchmarks.serving

## bench-compile: MXNet vs lis compile's untuned and tuned artifacts (models/tuning/), p50 at 2 threads (not a test)
bench-compile: $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks.compile

## models: build the demo model artifacts (compiled DLR detectors) if missing
models: $(VENV)/.installed-$(SERVE_LEVEL)
	$(BIN)/lis models build

## eval-models: accuracy/mAP of the demo models on held-out generated data, through DLR
eval-models: $(VENV)/.installed-dev
	$(BIN)/lis models build
	$(BIN)/python -m modelkit.evaluate

## train-models: retrain the committed demo weights from scratch (slow)
train-models: $(VENV)/.installed-dev
	$(BIN)/python -m modelkit.train all

install: $(VENV)/.installed-compile
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed-runtime: $(INSTALL_INPUTS)
	VENV=$(VENV) PYTHON=$(PYTHON) scripts/install.sh runtime
	touch $@

$(VENV)/.installed-compile: $(INSTALL_INPUTS)
	VENV=$(VENV) PYTHON=$(PYTHON) scripts/install.sh compile
	touch $@ $(VENV)/.installed-runtime

$(VENV)/.installed-dev: $(INSTALL_INPUTS)
	VENV=$(VENV) PYTHON=$(PYTHON) scripts/install.sh dev
	touch $@ $(VENV)/.installed-compile $(VENV)/.installed-runtime

clean:
	rm -rf build .pytest_cache
