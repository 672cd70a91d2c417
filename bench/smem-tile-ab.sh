#!/usr/bin/env bash
# A/B of the smem LARGE tile on a GPU (the default 128x128x8/8x8 vs the former 128x128x16/8x8), two
# alternating rounds in one call, after the AdapterHub parity check: OUT=dir bench/smem-tile-ab.sh
OUT=${OUT:-bench/results}
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 bench/parity.py .devbin/peft .devbin/fixtures 2>&1 | tail -4
for round in 1 2; do
for tile in 128x128x8/8x8 128x128x16/8x8; do
  echo "== round $round PEFT_SMEM_LARGE_TILE=$tile"
  PEFT_SMEM_LARGE_TILE=$tile .devbin/peft bench --only matmul,step --config bert-base --config bert-large --json $OUT/tile-${tile%%/*}-r$round.jsonl 2>&1 | grep -E "matmul|train_step|error|FAIL" | head -12
done
done
