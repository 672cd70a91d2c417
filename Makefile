# peft-wgpu: the two commands. Both install what is missing on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
CARGO ?= cargo
# Tests share one CPU Vulkan device on CI machines: keep the threads few.
TEST_THREADS ?= 2

.PHONY: demo test deps vulkan build fmt lint

demo: deps
	$(CARGO) build --release
	./target/release/peft info

test: deps
	$(CARGO) test -- --test-threads=$(TEST_THREADS)

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
