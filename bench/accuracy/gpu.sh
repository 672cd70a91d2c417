#!/usr/bin/env bash
# Issue 19 on a lent GPU machine, one call: ours next to the `adapters` library where adapters
# converge (Rotten Tomatoes' whole train split but a seeded 10 % dev hold-out, 3 epochs, MiniLM +
# Houlsby, the settings of bench/results/accuracy/rt-full-3ep-minilm-houlsby-cpu.md), 5 seeds each,
# same examples / order / batches; then the demo's GPU settings (`make demo` on a GPU) with its
# printed dev accuracy. Everything it needs comes from bench/accuracy/pack-gpu.sh's folder (the
# machine has no network): carry it, then
#
#   bash bench/accuracy/gpu.sh .cache/gpu-carry/accuracy      # RESULTS_DIR=$OUT to collect
#
# Sizes: SEEDS (5), EPOCHS (3), TRAIN_N (7677), DEV_N (853), MAX_LENGTH (64); ONLY=peft skips
# the adapters library; DEMO=0 the demo, DEMO_ARGS its settings (Makefile's DEMO_GPU_ARGS);
# PYTHON: an interpreter with torch, numpy and safetensors (if it has `adapters` too, the carried
# one is not used). The Vulkan loader as in bench/gpu.sh (.gl/*.deb when the system has none).
# Tested end to end on lavapipe with PyTorch on the CPU at a tiny size (the CUDA side is not).
set -uo pipefail
cd "$(dirname "$0")/../.."
PACK=${1:-.cache/gpu-carry/accuracy}
RESULTS_DIR=${RESULTS_DIR:-bench/results/accuracy}
SEEDS=${SEEDS:-5}
EPOCHS=${EPOCHS:-3}
TRAIN_N=${TRAIN_N:-7677}
DEV_N=${DEV_N:-853}
MAX_LENGTH=${MAX_LENGTH:-64}
ONLY=${ONLY:-both}
PYTHON=${PYTHON:-python3}
[ -f "$PACK/peft.xz" ] || { echo "no $PACK/peft.xz: run bench/accuracy/pack-gpu.sh and carry its folder" >&2; exit 1; }
mkdir -p "$RESULTS_DIR"
work=$(mktemp -d)
log=$work/log.txt
say() { echo "$@" | tee -a "$log"; }

# The Vulkan loader and the NVIDIA ICD.
source bench/vulkan-loader.sh

# Unpack: the binary, the model (f16 widened to f32: both trainers read the same weights).
xz -dc "$PACK/peft.xz" > "$work/peft" && chmod +x "$work/peft"
PEFT=$work/peft
mkdir -p "$work/model"
for f in "$PACK"/model/*; do [ "${f%.xz}" = "$f" ] && cp -r "$f" "$work/model/"; done
xz -dc "$PACK/model/model-f16.safetensors.xz" > "$work/model-f16.safetensors"
"$PYTHON" - "$work/model-f16.safetensors" "$work/model/model.safetensors" <<'PY' || exit 1
import sys
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: (v.astype("float32") if v.dtype.kind == "f" else v) for k, v in t.items()}, sys.argv[2])
PY
xz -dc "$PACK/rotten_tomatoes.csv.xz" > "$work/rotten_tomatoes.csv"
"$PEFT" info 2>&1 | tee -a "$log" || exit 1
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
[ -n "$card" ] || card=$("$PEFT" info | sed -n 's/^selected: \[[0-9]*\] \([^(]*\) (.*/\1/p')
slug=$(echo "$card" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//' | tr 'A-Z' 'a-z')

# The adapters library (1.3.0 with the transformers it needs) from the carried folder, ahead of
# the system's packages; the system's python3 holds torch.
py=$PYTHON
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "$ONLY" != peft ] && ! "$PYTHON" -c "import adapters, torch" 2>/dev/null; then
  mkdir -p "$work/site" && xz -dc "$PACK/site.tar.xz" | tar -C "$work/site" -xf -
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ "$ONLY" != peft ] && ! "$py" -c "import adapters, torch; print('adapters', adapters.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$log"; then
  say "the adapters library does not import here: ours only"
  ONLY=peft
fi

# 1. Ours and theirs, same examples, order, batches, schedule and seeds.
name=rt-full-${EPOCHS}ep-minilm-houlsby-$slug
out=$work/$name
say "== bench/accuracy/run.py ($ONLY, $SEEDS seeds, $EPOCHS epochs, $TRAIN_N train / $DEV_N dev) -> $RESULTS_DIR/$name"
PEFT_SHADER_CHECKS=0 "$py" bench/accuracy/run.py --peft "$PEFT" --model "$work/model" --data "$work/rotten_tomatoes.csv" \
  --train-examples "$TRAIN_N" --dev-examples "$DEV_N" --seeds "$SEEDS" --epochs "$EPOCHS" --max-length "$MAX_LENGTH" \
  --only "$ONLY" --device-name "$card (ours: Vulkan; adapters: PyTorch $("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null))" \
  --out "$out" 2>&1 | tee -a "$log"
cp "$out.md" "$out.json" "$RESULTS_DIR/" 2>/dev/null || say "run.py wrote no results"

# 2. The demo's GPU settings (Makefile DEMO_GPU_ARGS; `make demo` prints this accuracy). DEMO=0 skips.
if [ "${DEMO:-1}" = 0 ]; then cp "$log" "$RESULTS_DIR/gpu-accuracy-$slug-log.txt"; exit 0; fi
read -r -a demo_args <<< "${DEMO_ARGS:---epochs 3 --batch-size 32 --lr 1e-3}"
say "== the demo on this GPU: peft train --dev-split 0.1 --config houlsby ${demo_args[*]}"
PEFT_SHADER_CHECKS=0 "$PEFT" train --model "$work/model" --train "$work/rotten_tomatoes.csv" --dev-split 0.1 --config houlsby \
  "${demo_args[@]}" --out "$work/demo" 2>&1 | tail -n 5 | tee -a "$log"
cp "$work/demo/metrics.jsonl" "$RESULTS_DIR/demo-$slug-metrics.jsonl" 2>/dev/null
cp "$log" "$RESULTS_DIR/gpu-accuracy-$slug-log.txt"
say "wrote $name.md / .json, demo-$slug-metrics.jsonl and gpu-accuracy-$slug-log.txt in $RESULTS_DIR"
