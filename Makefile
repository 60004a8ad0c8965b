# Set-up, build and test entry points. `make run` and `make test` are the two
# commands a fresh clone needs; both install what they use.

MLX_VERSION := 0.32.4
PYTHON ?= python3
VENV := .venv
CARGO ?= cargo
# The main job: classify a sample message against the shipped spam policy with
# the default model (gpt-oss-safeguard-20b, pulled on first use). MODEL=DIR or
# an alias picks another model; ARGS replaces the whole command line.
SAMPLE := Congratulations! You won a free phone. Enter your bank details at win-now.example to claim it.
ARGS ?= classify --policy spam $(if $(MODEL),-m "$(MODEL)") "$(SAMPLE)"

ifeq ($(shell uname -s),Darwin)
  DEFAULT_BACKEND := metal
else
  DEFAULT_BACKEND := cpu
endif
# After `MLX_BACKEND=cuda make setup`, later commands (make run, make test)
# keep the installed backend instead of swapping the wheel back.
INSTALLED_BACKEND := $(patsubst $(VENV)/.setup-%-$(MLX_VERSION),%,$(firstword $(wildcard $(VENV)/.setup-*-$(MLX_VERSION))))
MLX_BACKEND ?= $(or $(INSTALLED_BACKEND),$(DEFAULT_BACKEND))

# Each backend is its own wheel of the same `mlx` release: mlx-metal on macOS,
# mlx-cpu / mlx-cuda-12 / mlx-cuda-13 on Linux, selected by pip extras.
ifeq ($(MLX_BACKEND),metal)
  MLX_PACKAGE := mlx==$(MLX_VERSION)
else ifneq ($(filter $(MLX_BACKEND),cpu cuda cuda12 cuda13),)
  MLX_PACKAGE := mlx[$(MLX_BACKEND)]==$(MLX_VERSION)
else
  $(error MLX_BACKEND=$(MLX_BACKEND) is not one of: metal (macOS), cpu, cuda, cuda12, cuda13 (Linux))
endif

SETUP_STAMP := $(VENV)/.setup-$(MLX_BACKEND)-$(MLX_VERSION)
FIXTURES := target/fixtures
FIXTURE_STAMP := $(FIXTURES)/.generated
PIP := $(VENV)/bin/pip --disable-pip-version-check --quiet

.PHONY: setup chromium openblas fixtures build run test fmt clean bench soak

setup: $(SETUP_STAMP) chromium

# On Linux, installs Debian package $(2) when $(1) is missing, for $(3);
# without apt-get says how to get it ($(4)) and runs $(5) (exit 1: required).
define apt_install
	@if [ ! -e "$(1)" ] && [ "$$(uname -s)" = Linux ]; then \
		if ! command -v apt-get >/dev/null 2>&1; then \
			echo "$(1) is missing ($(3)), and apt-get is not here: install $(2) with this system's package manager ($(4))" >&2; $(5); \
		else \
			echo "installing $(2) for $(3) (apt-get)"; \
			if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
			$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2); \
		fi; \
	fi
endef

# The browser tests (tests/web.rs) drive Debian's chromium through Playwright
# (pip, in requirements.txt) with executable_path: Playwright never downloads a
# browser. On Linux it is installed with apt-get when missing; elsewhere, point
# SAFEGUARD_CHROMIUM at a Chromium or Chrome binary.
CHROMIUM ?= $(or $(SAFEGUARD_CHROMIUM),/usr/bin/chromium)
chromium:
	$(call apt_install,$(CHROMIUM),chromium,the browser tests,or set SAFEGUARD_CHROMIUM,exit 1)

# OPENBLAS=1 (Linux): installs Debian's serial OpenBLAS and links it into the
# binary, where MLX's float32 matmuls (attention) call it instead of the naive
# BLAS bundled with the mlx wheel: faster prefill, but chunked and batched
# rows no longer give alone's exact bits (see build.rs). Off by default.
OPENBLAS_DIR := /usr/lib/$(shell uname -m)-linux-gnu/openblas-serial
ifeq ($(OPENBLAS),1)
export SAFEGUARD_OPENBLAS_DIR := $(OPENBLAS_DIR)
setup bench: openblas
endif
openblas:
	$(call apt_install,$(OPENBLAS_DIR)/libopenblas.so.0,libopenblas0-serial,OPENBLAS=1,or set SAFEGUARD_OPENBLAS_DIR to a folder holding libopenblas.so.0,exit 1)

$(SETUP_STAMP): requirements.txt Makefile
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@# Backend wheels install into the same mlx/ folder: drop any other backend first.
	@if ls $(VENV)/.setup-* >/dev/null 2>&1 && ! ls $(VENV)/.setup-$(MLX_BACKEND)-* >/dev/null 2>&1; then \
		$(PIP) uninstall -y mlx mlx-cpu mlx-cuda-12 mlx-cuda-13 mlx-metal; fi
	$(PIP) install "$(MLX_PACKAGE)" -r requirements.txt
	@rm -f $(VENV)/.setup-*
	@touch $@
	@echo "MLX $(MLX_VERSION) ($(MLX_BACKEND)) and the test references are in $(VENV)"

# Test fixtures are generated, never committed: the o200k_harmony tokenizer
# (verified against tiktoken and openai-harmony) and small random-weight
# gpt-oss models with mlx-lm's reference outputs.
fixtures: $(FIXTURE_STAMP)

$(FIXTURE_STAMP): $(SETUP_STAMP) $(wildcard tests/fixtures/*.py)
	$(VENV)/bin/python tests/fixtures/generate.py $(FIXTURES)
	@touch $@

build: setup
	$(CARGO) build --release

run: build
	./target/release/safeguard $(ARGS)

test: setup fixtures
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test

fmt:
	$(CARGO) fmt

# Side-by-side with mlx-lm on a 4-layer model with gpt-oss-20b's real layer
# shapes (generated once into target/perf-fixture). Sizes via env:
# PROMPT_TOKENS GEN_TOKENS RUNS CLASSIFY_ITEMS CLASSIFY_MAX_TOKENS POLICY,
# CLASSIFY_BATCH CLASSIFY_BASELINE_ITEMS (see benches/compare.py).
# LLAMA_CPP=1 adds llama.cpp's llama-bench on a GGUF of the same weights
# (benches/llama_cpp.py): its first run builds llama.cpp from the llama-cpp-python
# sdist into target/llama.cpp (needs cmake; ~10 minutes on 2 cores), later runs reuse it.
PERF_FIXTURE := target/perf-fixture
PERF_STAMP := $(PERF_FIXTURE)/.generated
PERF_LAYERS ?= 4
export PROMPT_TOKENS ?= 128
export GEN_TOKENS ?= 16
export RUNS ?= 2
export CLASSIFY_ITEMS ?= 8
export CLASSIFY_MAX_TOKENS ?= 8
export LLAMA_CPP ?= 0

# Only the fixtures' tokenizer is needed; run `make fixtures` first if it is missing
# (no dependency on the stamps: bench never rewrites the test fixtures).
$(PERF_STAMP): benches/perf_fixture.py
	@test -f $(FIXTURES)/tokenizer/tokenizer.json || { echo "run make fixtures first"; exit 1; }
	$(VENV)/bin/python benches/perf_fixture.py $(PERF_FIXTURE) $(FIXTURES)/tokenizer $(PERF_LAYERS)
	@touch $@

# LOAD=1 runs benches/load.py instead: `serve` under streams, long-prompt
# arrivals and short requests (sizes via LOAD_* env, see the script;
# LOAD_MODEL=DIR for another model, LOAD_BINARY=PATH for another build).
export LOAD ?= 0
LOAD_MODEL ?= $(PERF_FIXTURE)
LOAD_BINARY ?= ./target/release/safeguard

bench: $(SETUP_STAMP) $(PERF_STAMP)
	$(CARGO) build --release
ifeq ($(LOAD),1)
	$(VENV)/bin/python benches/load.py $(LOAD_MODEL) $(LOAD_BINARY)
else
	$(VENV)/bin/python benches/compare.py $(PERF_FIXTURE) ./target/release/safeguard
endif

# Mixed traffic against `safeguard serve` for SOAK_SECONDS (default 300),
# memory sampled throughout; fails if it keeps growing after warm-up.
SOAK_MODEL ?= $(FIXTURES)/a-mxfp4
soak: fixtures
	$(CARGO) build --release
	$(VENV)/bin/python benches/soak.py ./target/release/safeguard $(SOAK_MODEL)

clean:
	$(CARGO) clean
	rm -rf $(VENV)
