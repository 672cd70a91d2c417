#!/usr/bin/env bash
# The one script for a lent GPU machine: Vulkan loader, build (or a prebuilt binary), correctness on
# that GPU, our benchmarks and PyTorch's from the same run, and a results file with the side-by-side
# table: bench/results/<date>-<card>.md (or $RESULTS_DIR/...).
#
#   bench/gpu.sh                      # builds with cargo if PEFT_BIN is not given
#   PEFT_BIN=.devbin/peft FIXTURES=.devbin/fixtures RESULTS_DIR=$OUT bench/gpu.sh
#
# Needs: an NVIDIA (or other) GPU with a Vulkan driver; python3 with torch, transformers, numpy and
# safetensors for the baseline and the parity check; the Vulkan loader (libvulkan1): unpacked from
# .gl/*.deb when the system has none (see README "Benchmarks on a GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS_DIR=${RESULTS_DIR:-bench/results}
FIXTURES=${FIXTURES:-tests/fixtures}
QUICK=${QUICK:-0}
mkdir -p "$RESULTS_DIR"
work=$(mktemp -d)
log=$work/log.txt
say() { echo "$@" | tee -a "$log"; }

# 1. The Vulkan loader and the NVIDIA ICD.
source bench/vulkan-loader.sh

# 2. The binary.
PEFT=${PEFT_BIN:-}
if [ -z "$PEFT" ]; then
  cargo build --release || exit 1
  PEFT=target/release/peft
fi
"$PEFT" info 2>&1 | tee -a "$log" || exit 1
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
[ -n "$card" ] || card=$("$PEFT" info | sed -n 's/^selected: \[[0-9]*\] \([^(]*\) (.*/\1/p')
slug=$(echo "$card" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//' | tr 'A-Z' 'a-z')
file="$RESULTS_DIR/$(date +%F)-$slug.md"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

# 3. Correctness on this GPU: every kernel `peft bench` times is first checked against the f64
# reference; here, the whole encoder against the AdapterHub fixtures.
parity_ok=1
if [ -d "$FIXTURES/tiny-bert" ]; then
  "${PYTHON:-python3}" bench/parity.py "$PEFT" "$FIXTURES" 2>&1 | tee -a "$log" || parity_ok=0
else
  say "parity: no fixtures at $FIXTURES (skipped)"
fi

# The results file (written after the main comparison and again at the end).
write_results() {
  {
    echo "# Benchmarks on $card ($(date -u +'%F %H:%M UTC'), commit $commit)"
    echo
    echo "Ours: \`peft bench\` through Vulkan (wgpu); PyTorch: \`bench/pytorch_baseline.py\`, eager, same card, same run."
    echo "Kernel times: median of GPU timestamps (ours) / CUDA events (PyTorch); train steps: wall clock, one sync per step."
    echo "Parity with the AdapterHub fixtures on this GPU: $([ $parity_ok = 1 ] && echo passed || echo FAILED)."
    echo
    python3 bench/compare.py "$ours" "$torch" --card "$card"
    echo
    echo "## Train step by matmul variant (bert-base shape; then \`--precision f16\` weights, every config; then the demo epoch padded to multiples of 8)"
    echo
    for v in ${STEP_VARIANTS:-tiled smem f16 coop} f16w pad8; do
      [ -s "$work/step-$v.jsonl" ] && python3 - "$work/step-$v.jsonl" "$v" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    m = json.loads(l)
    print(f"- {sys.argv[2]}: {m['name']} {m['variant']} {m['median_us'] / 1e3:.1f} ms/step, "
          f"{m['gflops'] / 1e3:.1f} TFLOP/s, {m['extra'].get('tokens_per_s', m['extra'].get('real_tokens_per_s', 0)):.0f} tokens/s")
PY
    done
    echo
    if ls "$work"/profile-*.txt >/dev/null 2>&1; then
      echo "## Profiles (one train step, a GPU timestamp per dispatch: \`peft bench --profile\`)"
      echo
      for f in "$work"/profile-*.txt; do
        echo "### $(basename "$f" .txt)"
        echo
        echo '```'
        cat "$f"
        echo '```'
        echo
      done
    fi
    echo "## Log"
    echo
    echo '```'
    cat "$log"
    echo '```'
  } > "$file"
  cat "$work"/step-*.jsonl > "$RESULTS_DIR/steps.jsonl" 2>/dev/null
  for f in "$work"/profile-*.json; do [ -s "$f" ] && cp "$f" "$RESULTS_DIR/"; done
  cp "$ours" "$torch" "$RESULTS_DIR/" 2>/dev/null
  [ -s "$work/matmul.jsonl" ] && cp "$work/matmul.jsonl" "$RESULTS_DIR/"
  echo "wrote $file (and ours.jsonl, torch.jsonl, steps.jsonl, matmul.jsonl beside it)"
}

# 4. Ours, then PyTorch's, same card, same run.
ours=$work/ours.jsonl
torch=$work/torch.jsonl
extra=()
[ "$QUICK" = 1 ] && extra=(--reps 5 --warmup 1)
# Extra arguments (a smoke test on a CPU: BENCH_ARGS="--tokens 128 ..." TORCH_ARGS="--device cpu --small").
read -r -a bench_args <<< "${BENCH_ARGS:-}"
read -r -a torch_args <<< "${TORCH_ARGS:-}"
say "== peft bench"
"$PEFT" bench --stream-layers 1 --json "$ours" "${extra[@]}" "${bench_args[@]}" 2>&1 | tee -a "$log"
say "== PyTorch"
PYTHONUNBUFFERED=1 "${PYTHON:-python3}" bench/pytorch_baseline.py --json "$torch" "${extra[@]}" "${torch_args[@]}" 2>&1 | tee -a "$log"
write_results

# Matmul variants in the whole train step (bert-base shape).
for v in ${STEP_VARIANTS:-tiled smem f16 coop}; do
  say "== peft bench --only step, PEFT_MATMUL_VARIANT=$v"
  PEFT_MATMUL_VARIANT=$v "$PEFT" bench --only step --config "${STEP_CONFIG:-bert-base}" --json "$work/step-$v.jsonl" "${extra[@]}" "${bench_args[@]}" 2>&1 | tee -a "$log" || say "variant $v: failed"
done
# Issue 15's rows with the frozen weights in f16 (`--precision f16`; the matrices stored as f16,
# widened to f32 a layer at a time before the products).
say "== peft bench --only step,demo --precision f16"
"$PEFT" bench --only step,demo --precision f16 --json "$work/step-f16w.jsonl" "${extra[@]}" "${bench_args[@]}" 2>&1 | tee -a "$log" || say "f16 steps: failed"

# The demo epoch with each batch padded to a multiple of 8 (the GPUs' default in `peft train`,
# issue 15 item 2's length buckets): its padded tokens (+12 % on RT) against the buffers and bind
# groups the unpadded epoch creates for new lengths.
say "== peft bench --only demo --pad-to-multiple-of 8"
"$PEFT" bench --only demo --pad-to-multiple-of 8 --json "$work/step-pad8.jsonl" "${extra[@]}" "${bench_args[@]}" 2>&1 | tee -a "$log" || say "demo pad 8: failed"

# Profiles (issue 15 item 1): BERT-base and MiniLM steps at 32 x 128 with the device's policy (and
# MiniLM with the default recipe's dropout, as `peft train` trains), then
# BERT-base with each choice issue 15 compares: attention kernels, the buffer pool, f16 weights.
# PROFILES=0 skips them.
profile() { # name, env assignments..., -- peft arguments...
  local name=$1; shift
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  say "== peft bench --profile $* (${envs[*]:-device policy}) -> $name"
  env "${envs[@]}" "$PEFT" bench --profile "$@" --json "$work/profile-$name.json" > "$work/profile-$name.txt" 2>&1 \
    || say "profile $name: failed"
  grep -E '^(profile|wall|created|dispatches a layer)' "$work/profile-$name.txt" | tee -a "$log"
}
if [ "${PROFILES:-1}" != 0 ]; then
  p=(--batch "${PROFILE_BATCH:-32}" --seq "${PROFILE_SEQ:-128}")
  profile bert-base -- bert-base "${p[@]}"
  profile minilm -- minilm "${p[@]}"
  profile minilm-dropout -- minilm "${p[@]}" --dropout
  profile bert-base-attention-separate PEFT_ATTENTION_KERNEL=separate -- bert-base "${p[@]}"
  profile bert-base-attention-fused PEFT_ATTENTION_KERNEL=fused -- bert-base "${p[@]}"
  profile bert-base-pool-off PEFT_BUFFER_POOL=0 -- bert-base "${p[@]}"
  profile bert-base-f16 -- bert-base "${p[@]}" --precision f16
  profile bert-base-coop PEFT_MATMUL_VARIANT=coop -- bert-base "${p[@]}"
  write_results
fi

# Every matmul variant and tile configuration on the encoder's products (examples/matmul_bench.rs).
MATMUL_BENCH=${MATMUL_BENCH:-$(dirname "$PEFT")/examples/matmul_bench}
[ -x "$MATMUL_BENCH" ] || MATMUL_BENCH=$(dirname "$PEFT")/matmul_bench
if [ -x "$MATMUL_BENCH" ]; then
  say "== matmul variants and tiles"
  timeout "${MATMUL_TIMEOUT:-150}" "$MATMUL_BENCH" --sweep --samples 5 --min-ms 5 > "$work/matmul.jsonl" 2> >(tee -a "$log" >&2) || say "matmul_bench: stopped (timeout or error)"
fi

write_results
