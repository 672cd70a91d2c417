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
FIXTURES=${FIXTURES:-../shared/fixtures}
QUICK=${QUICK:-0}
mkdir -p "$RESULTS_DIR"
log=$(mktemp)
say() { echo "$@" | tee -a "$log"; }

# 1. The Vulkan loader and the NVIDIA ICD.
if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
  for f in .gl/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -f "$icd" ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
  export VK_DRIVER_FILES=$icd
fi

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
  python3 bench/parity.py "$PEFT" "$FIXTURES" 2>&1 | tee -a "$log" || parity_ok=0
else
  say "parity: no fixtures at $FIXTURES (skipped)"
fi

# 4. Ours, then PyTorch's, same card, same run.
ours=$RESULTS_DIR/ours.jsonl
torch=$RESULTS_DIR/torch.jsonl
extra=()
[ "$QUICK" = 1 ] && extra=(--reps 5 --warmup 1)
say "== peft bench"
"$PEFT" bench --stream-layers 1 --json "$ours" "${extra[@]}" 2>&1 | tee -a "$log"
# Matmul variants in the whole train step (bert-base shape).
for v in ${STEP_VARIANTS:-tiled smem f16 coop}; do
  say "== peft bench --only step, PEFT_MATMUL_VARIANT=$v"
  PEFT_MATMUL_VARIANT=$v "$PEFT" bench --only step --config bert-base --json "$RESULTS_DIR/step-$v.jsonl" "${extra[@]}" 2>&1 | tee -a "$log" || say "variant $v: failed"
done
say "== PyTorch"
PYTHONUNBUFFERED=1 python3 bench/pytorch_baseline.py --json "$torch" "${extra[@]}" 2>&1 | tee -a "$log"

# 5. The results file.
{
  echo "# Benchmarks on $card ($(date -u +'%F %H:%M UTC'), commit $commit)"
  echo
  echo "Ours: \`peft bench\` through Vulkan (wgpu); PyTorch: \`bench/pytorch_baseline.py\`, eager, same card, same run."
  echo "Kernel times: median of GPU timestamps (ours) / CUDA events (PyTorch); train steps: wall clock, one sync per step."
  echo "Parity with the AdapterHub fixtures on this GPU: $([ $parity_ok = 1 ] && echo passed || echo FAILED)."
  echo
  python3 bench/compare.py "$ours" "$torch" --card "$card"
  echo
  echo "## Train step by matmul variant (bert-base shape)"
  echo
  for v in ${STEP_VARIANTS:-tiled smem f16 coop}; do
    [ -s "$RESULTS_DIR/step-$v.jsonl" ] && python3 -c "
import json,sys
for l in open('$RESULTS_DIR/step-$v.jsonl'):
    m=json.loads(l); print(f\"- $v: {m['name']} {m['variant']} {m['median_us']/1e3:.1f} ms/step, {m['gflops']/1e3:.1f} TFLOP/s, {m['extra'].get('tokens_per_s',0):.0f} tokens/s\")"
  done
  echo
  echo "## Log"
  echo
  echo '```'
  cat "$log"
  echo '```'
} > "$file"
echo "wrote $file"
