#!/usr/bin/env bash
# Packs what bench/accuracy/gpu.sh needs on a GPU machine without network (issue 19: ours vs the
# `adapters` library where adapters converge, on a GPU) into one folder to carry there (the device
# tool's `carry`; with the working tree 64 MiB in all, which this script checks): MiniLM's weights
# rounded to f16 (gpu.sh widens them back to f32 for both trainers, so both train the same
# f16-rounded model), its tokenizer and config, Rotten Tomatoes, a stripped release build of `peft`
# (the GPU machine has no crates.io), and `adapters` 1.3.0 with the transformers / tokenizers /
# huggingface-hub versions it needs, installed into one folder; all xz-compressed, ≈ 51 MB.
#
#   bash bench/accuracy/pack-gpu.sh [OUT]      # OUT: .cache/gpu-carry/accuracy (ignored by git)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-.cache/gpu-carry/accuracy}
PYTHON=${PYTHON:-python3}
MODEL=.cache/models/all-MiniLM-L6-v2
DATA=.cache/data/rotten_tomatoes/all.csv
[ -f "$MODEL/model.safetensors" ] || bash scripts/fetch-model.sh
[ -f "$DATA" ] || bash scripts/fetch-data.sh
rm -rf "$OUT"
mkdir -p "$OUT/model"
for f in "$MODEL"/*; do
  [ -f "$f" ] && [ "$(basename "$f")" != model.safetensors ] && cp "$f" "$OUT/model/"
done
"$PYTHON" - "$MODEL/model.safetensors" "$OUT/model/model-f16.safetensors" <<'PY'
import sys
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: (v.astype("float16") if v.dtype.kind == "f" else v) for k, v in t.items()}, sys.argv[2])
PY
xz -9e -T0 -f "$OUT/model/model-f16.safetensors"
xz -9e -T0 -c "$DATA" > "$OUT/rotten_tomatoes.csv.xz"
cargo build --release
strip -o "$OUT/peft" target/release/peft
xz -9e -T0 -f "$OUT/peft"
# adapters 1.3.0 needs transformers ~= 4.57.6 (the GPU image has 5.x), huggingface-hub < 1 and
# tokenizers <= 0.23.0: installed here into a folder (pure Python and an abi3 extension, so any
# CPython >= 3.9 there imports them) and carried as one archive for PYTHONPATH.
wheels=$(mktemp -d)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 --implementation cp \
  --python-version 3.12 "adapters==1.3.0" "transformers==4.57.6" "huggingface-hub>=0.34,<1.0" \
  "tokenizers>=0.22,<0.23" -d "$wheels"
"$PYTHON" -m pip install -q --no-deps --no-compile --target "$wheels/site" "$wheels"/*.whl
tar -C "$wheels/site" -cf - . | xz -9e -T0 > "$OUT/site.tar.xz"
rm -rf "$wheels"
du -sh "$OUT"
# A device call carries the working tree (tracked files) and this folder, 64 MiB in all.
size=$(( $(du -sb "$OUT" | cut -f1) + $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) ))
[ "$size" -le $((64 * 1024 * 1024)) ] || { echo "pack-gpu: $size bytes with the working tree, over the 64 MiB a device call carries" >&2; exit 1; }
echo "with the working tree: $size bytes (64 MiB = $((64 * 1024 * 1024)))"
echo "carry '$OUT' (and .gl, the Vulkan loader, as bench/gpu.sh) and run: bash bench/accuracy/gpu.sh $OUT"
