#!/usr/bin/env bash
# Memory (issue 8) on a GPU: planned vs measured peak of one Houlsby + AdamW training step at
# 32 × 128 for the MiniLM, BERT-base and BERT-large shapes (random weights) within the issue's
# targets (--max-gpu-memory 150MiB / 400MiB / 1GiB: the planner picks resident layers, recompute
# and layer chunks), the step-time cost of --recompute (all layers resident, off vs on), and
# PyTorch's peak and step on the same card. Results: $RESULTS_DIR/memory-<date>-<card>.md + jsonl.
#
#   PEFT_BIN=.devbin/peft RESULTS_DIR=$OUT bench/memory-gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS_DIR=${RESULTS_DIR:-bench/results}
PEFT=${PEFT_BIN:-target/release/peft}
STEPS=${STEPS:-5}
mkdir -p "$RESULTS_DIR"
if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
  for f in .gl/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && [ -z "${VK_DRIVER_FILES:-}" ] && export VK_DRIVER_FILES=$icd
[ -x "$PEFT" ] || { cargo build --release || exit 1; }
"$PEFT" info | head -3
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
[ -n "$card" ] || card=$("$PEFT" info | sed -n 's/^selected: \[[0-9]*\] \([^(]*\) (.*/\1/p')
slug=$(echo "$card" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//' | tr 'A-Z' 'a-z')
ours=$RESULTS_DIR/memory-ours.jsonl
torch=$RESULTS_DIR/memory-torch.jsonl
log=$RESULTS_DIR/memory-log.txt
: > "$ours"
: > "$log"
scratch=$(mktemp -d)
for pair in minilm:150MiB bert-base:400MiB bert-large:1GiB; do
  c=${pair%%:*} budget=${pair#*:}
  echo "== $c within $budget" | tee -a "$log"
  "$PEFT" bench --memory --config "$c" --batch 32 --seq 128 --max-gpu-memory "$budget" --steps "$STEPS" \
    --scratch "$scratch" --json "$scratch/t.jsonl" 2>&1 | tee -a "$log" && cat "$scratch/t.jsonl" >> "$ours"
  echo "== $c resident: recompute off, on, on keeping FFN outputs" | tee -a "$log"
  "$PEFT" bench --memory --config "$c" --batch 32 --seq 128 --resident-layers 1000 --compare-recompute \
    --steps "$STEPS" --scratch "$scratch" --json "$scratch/r.jsonl" 2>&1 | tee -a "$log" && cat "$scratch/r.jsonl" >> "$ours"
done
if [ "${TORCH:-1}" = 1 ]; then
  echo "== PyTorch" | tee -a "$log"
  PYTHONUNBUFFERED=1 "${PYTHON:-python3}" bench/pytorch_baseline.py --only step --config minilm --config bert-base \
    --config bert-large --batch 32 --seq 128 --warmup 2 --reps "$STEPS" --json "$torch" 2>&1 | tee -a "$log"
fi
"${PYTHON:-python3}" - "$ours" "$torch" "$card" > "$RESULTS_DIR/memory-$(date +%F)-$slug.md" <<'PY'
import json, os, statistics, sys
ours = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
torch = [json.loads(l) for l in open(sys.argv[2])] if os.path.exists(sys.argv[2]) else []
card = sys.argv[3]
mib = lambda b: b / 2**20
target = {"minilm": 150, "bert-base": 400, "bert-large": 1024}
def step_ms(r):
    t = r["step_seconds"][1:] or r["step_seconds"]
    return 1e3 * statistics.median(t)
def torch_of(r):
    for m in torch:
        if m["variant"] == "torch-fp32" and m["name"] == f"train_step_{r['layers']}x{r['hidden']}":
            return m
print(f"# Memory: one Houlsby + AdamW training step, 32 × 128, on {card}\n")
print("Ours: `peft bench --memory` (planned = the planner before the step; measured = our accounting of every")
print("GPU buffer, a dropped one counted until the GPU is done with it). PyTorch: `bench/pytorch_baseline.py`,")
print("eager fp32, `torch.cuda.max_memory_allocated`, same card, same run. Step: median wall time after the first.\n")
print("| shape | setup | planned MiB | measured MiB | target MiB | step ms | PyTorch MiB | PyTorch step ms |")
print("|---|---|---|---|---|---|---|---|")
for r in ours:
    setup = f"{r['resident_layers']}/{r['layers']} layers resident, recompute {'on' if r['recompute'] else 'off'}"
    if r.get("keep_ffn_output"):
        setup += " keeping FFN outputs"
    if r.get("layer_chunk"):
        setup += f", chunks of {r['layer_chunk']}"
    t = torch_of(r)
    tp = f"{t['extra']['peak_gpu_mib']:.0f}" if t and t["extra"].get("peak_gpu_mib") else "—"
    ts = f"{t['median_us'] / 1e3:.1f}" if t else "—"
    print(f"| {r['config']} | {setup} | {mib(r['planned_bytes']):.1f} | **{mib(r['measured_bytes']):.1f}** | "
          f"{target.get(r['config'], '—')} | {step_ms(r):.1f} | {tp} | {ts} |")
print()
by = {}
for r in ours:
    if r["resident_layers"] == r["layers"] and not r.get("layer_chunk"):
        mode = "keep-ffn" if r["recompute"] and r.get("keep_ffn_output") else r["recompute"]
        by.setdefault(r["config"], {})[mode] = step_ms(r)
for c, v in by.items():
    if False not in v:
        continue
    for mode, what in [(True, "--recompute"), ("keep-ffn", "--recompute --keep-ffn-output")]:
        if mode in v:
            print(f"- {c}: step time with {what} / without (all layers resident) = **{v[mode] / v[False]:.3f}** "
                  f"({v[mode]:.1f} / {v[False]:.1f} ms)")
PY
cat "$RESULTS_DIR"/memory-*-"$slug".md
rm -rf "$scratch"
