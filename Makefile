# peft-wgpu: the two commands. Both install what is missing on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
CARGO ?= cargo
# Tests share one CPU Vulkan device on CI machines: keep the threads few.
TEST_THREADS ?= 2

.PHONY: demo fusion-demo ner-demo test test-webgpu-limits deps vulkan build fmt lint fuzz web web-deps web-test

MODEL := .cache/models/all-MiniLM-L6-v2
DATA := .cache/data/rotten_tomatoes/all.csv
DEMO_OUT ?= runs/rotten-tomatoes-houlsby
# On a CPU Vulkan driver (lavapipe) the demo trains on a subset sized to finish in ~5 minutes on 2 cores;
# on a GPU it trains on the whole train split. Override with DEMO_ARGS="...".
DEMO_CPU_ARGS ?= --max-train-examples 3200 --max-dev-examples 400 --epochs 1 --batch-size 16 --lr 3e-3
DEMO_GPU_ARGS ?= --epochs 3 --batch-size 32 --lr 1e-3

demo: deps
	$(CARGO) build --release
	bash scripts/fetch-model.sh
	bash scripts/fetch-data.sh
	./target/release/peft info
	@if ./target/release/peft info | grep -q '^selected:.*, Cpu,'; then \
	  echo "demo: CPU Vulkan driver: training on a subset ($(DEMO_CPU_ARGS))"; \
	  args="$${DEMO_ARGS:-$(DEMO_CPU_ARGS)}"; \
	else \
	  echo "demo: GPU: training on the whole train split ($(DEMO_GPU_ARGS))"; \
	  args="$${DEMO_ARGS:-$(DEMO_GPU_ARGS)}"; \
	fi; \
	./target/release/peft train --model $(MODEL) --train $(DATA) --dev-split 0.1 --config houlsby $$args --out $(DEMO_OUT)
	./target/release/peft predict --model $(MODEL) --adapter $(DEMO_OUT) --text "a warm, funny and beautifully acted film"

# AdapterFusion on real data: four source adapters (sentiment, topic, spam, author), fused for the
# drug-review and IMDB targets; prints target test accuracy (head only / own adapter / fusion) and
# the fusion weights. Sized for <= 30 minutes on lavapipe (2 cores); bigger on a GPU. The sizes are
# environment variables of scripts/fusion-demo.sh.
fusion-demo: deps
	$(CARGO) build --release
	PEFT=./target/release/peft bash scripts/fusion-demo.sh

# NER: a Houlsby adapter with a tagging head on CoNLL data (tests/fixtures/ner-demo, synthetic and
# fixture-sized: see scripts/ner-demo.sh); prints the dev entity F1 and a sentence's tags.
ner-demo: deps
	$(CARGO) build --release
	PEFT=./target/release/peft bash scripts/ner-demo.sh

test: deps
	$(CARGO) test -- --test-threads=$(TEST_THREADS)
	$(MAKE) test-webgpu-limits
	bash scripts/web-test.sh

# The parity, training and fusion suites again with the device requested at exactly WebGPU's
# default limits and no optional features (README: Choosing a GPU). tests/webgpu_limits.rs and
# the no-GPU limit checks run in the plain `cargo test` above.
test-webgpu-limits: deps
	PEFT_LIMITS=webgpu $(CARGO) test --test parity --test train --test fusion_train -- --test-threads=$(TEST_THREADS)

deps: vulkan
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs or apt-get install cargo)"; exit 1; }

# A Vulkan driver only when no Vulkan device is present (Mesa lavapipe on CPU-only machines).
vulkan:
	@bash scripts/install-vulkan.sh

build:
	$(CARGO) build --release

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# cargo-fuzz targets (nightly; installs cargo-fuzz when missing), FUZZ_SECONDS each (default 60).
fuzz:
	bash scripts/fuzz.sh

# The browser build: web/pkg (wasm-bindgen --target web) for web/index.html. Serve web/ over HTTP
# (e.g. `python3 -m http.server -d web`) and open it in a browser with WebGPU.
WASM_BINDGEN_VERSION := $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/version = "\(.*\)"/\1/p;q}' Cargo.lock)
web: web-deps
	$(CARGO) build -p peft-web --target wasm32-unknown-unknown --release
	wasm-bindgen --target web --no-typescript --out-dir web/pkg target/wasm32-unknown-unknown/release/peft_web.wasm
	@ls -l web/pkg/peft_web_bg.wasm | awk '{printf "web: web/pkg/peft_web_bg.wasm %.1f MiB\n", $$5 / 1048576}'

# The wasm target and the wasm-bindgen CLI of exactly the version in Cargo.lock.
web-deps:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@wasm-bindgen --version 2>/dev/null | grep -qF "$(WASM_BINDGEN_VERSION)" || \
	  $(CARGO) install wasm-bindgen-cli --version "$(WASM_BINDGEN_VERSION)"

# The browser test alone (headless Chromium; also part of `make test`).
web-test:
	bash scripts/web-test.sh
