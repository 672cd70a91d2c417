#!/usr/bin/env bash
# AdapterFusion on a low-resource target with a related source (issue #19 item 3): IMDB sentiment
# with 500 training reviews (TARGET=imdb, the default) or the drug reviews (TARGET=drugs: negative /
# neutral / positive, 600 training reviews in all); sources: a sentiment adapter (Rotten Tomatoes) and an unrelated topic
# adapter (20 Newsgroups), both Pfeiffer, trained once with `peft train`. For each seed: the target's
# head only (frozen base), its own Pfeiffer adapter, and AdapterFusion over the two sources
# (`peft fuse`), each keeping its best epoch on a fixed dev set (DEV_N reviews of the target's
# training file), then evaluated on TEST_N of its test reviews. Writes results.tsv (one row per run) in $OUT; bench/fusion/table.py makes the table.
#
# usage: bench/fusion/low-resource.sh   (knobs from the environment, defaults below; PEFT=binary)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here"
PEFT="${PEFT:-$here/target/release/peft}"
TARGET="${TARGET:-imdb}"
case $TARGET in imdb | drugs) ;; *) echo "low-resource: TARGET must be imdb or drugs, not $TARGET" >&2; exit 2 ;; esac
OUT="${OUT:-runs/fusion-low-resource}"
: "${SEEDS:=0 1 2}" "${MAX_LENGTH:=64}" "${BATCH:=32}" "${EPOCHS:=3}" "${LR:=1e-3}" "${FUSE_LR:=5e-4}"
: "${TRAIN_N:=500}" "${DEV_N:=100}" "${TEST_N:=500}" "${SENT_N:=3000}" "${TOPIC_N:=1000}" "${SRC_EPOCHS:=1}"
data="${PEFT_CACHE:-$here/.cache}/data"
model="$(bash scripts/fetch-model.sh --print-dir)"
rt="$(bash scripts/fetch-data.sh --print-path)"
bash scripts/fetch-fusion-data.sh orange "$TARGET"
for task in newsgroups "$TARGET"; do
    [[ -s "$data/$task/train.csv" ]] || "$PEFT" data prepare "$task" --out "$data/$task"
done
mkdir -p "$OUT"
t0=$(date +%s)
say() { echo "low-resource [$(($(date +%s) - t0)) s]: $*"; }

# A fixed split for every seed: TRAIN_N training and DEV_N dev reviews from the target's training
# file (seeded shuffle), TEST_N from its test file.
python3 - "$data/$TARGET" "$OUT" "$TRAIN_N" "$DEV_N" "$TEST_N" <<'PY'
import csv, random, sys
src, out, n_train, n_dev, n_test = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
def rows(p):
    with open(p, newline="") as f:
        return list(csv.DictReader(f))
def write(p, rs):
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"]); w.writeheader(); w.writerows(rs)
train = rows(f"{src}/train.csv"); random.Random(0).shuffle(train)
test = rows(f"{src}/test.csv"); random.Random(1).shuffle(test)
write(f"{out}/train.csv", train[:n_train]); write(f"{out}/dev.csv", train[n_train:n_train + n_dev])
write(f"{out}/test.csv", test[:n_test])
PY

common=(--model "$model" --max-length "$MAX_LENGTH" --batch-size "$BATCH")
quiet() { grep -vE '^step [0-9]+/' || true; }
declare -A SRC=([sentiment]="$rt" [topic]="$data/newsgroups/train.csv")
declare -A SRC_N=([sentiment]="$SENT_N" [topic]="$TOPIC_N")
adapters=()
for name in sentiment topic; do
    dir="$OUT/adapters/$name"
    if [[ ! -s "$dir/adapter_config.json" ]]; then
        say "source $name: ${SRC_N[$name]} examples, $SRC_EPOCHS epoch(s)"
        "$PEFT" train "${common[@]}" --config pfeiffer --name "$name" --train "${SRC[$name]}" --dev-split 0.1 \
            --max-train-examples "${SRC_N[$name]}" --max-dev-examples 300 --epochs "$SRC_EPOCHS" --lr "$LR" \
            --out "$dir" | quiet
    fi
    adapters+=(--adapter "$dir")
done

results="$OUT/results.tsv"
[[ -s "$results" ]] || printf 'seed\tvariant\ttest_accuracy\ttest_macro_f1\ttest_n\tbest_dev\ttrain_seconds\n' >"$results"
acc() { sed -n 's/.*accuracy=\([0-9.]*\) macro_f1=\([0-9.]*\) n=\([0-9]*\).*/\1\t\2\t\3/p' | tail -1; }
best_dev() { python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(max(x.get('dev_accuracy', 0) for x in r if 'dev_accuracy' in x))" "$1/metrics.jsonl" 2>/dev/null || echo "?"; }
data_args=(--train "$OUT/train.csv" --dev "$OUT/dev.csv" --name "$TARGET" --epochs "$EPOCHS")
for seed in $SEEDS; do
    for variant in head-only adapter fusion; do
        dir="$OUT/seed$seed/$variant"
        grep -qP "^$seed\t$variant\t" "$results" && continue
        say "seed $seed: $variant"
        s=$(date +%s)
        case $variant in
            head-only) "$PEFT" train "${common[@]}" --config none "${data_args[@]}" --lr "$LR" --seed "$seed" --out "$dir" | quiet ;;
            adapter) "$PEFT" train "${common[@]}" --config pfeiffer "${data_args[@]}" --lr "$LR" --seed "$seed" --out "$dir" | quiet ;;
            fusion) "$PEFT" fuse "${common[@]}" "${adapters[@]}" "${data_args[@]}" --lr "$FUSE_LR" --seed "$seed" --out "$dir" | quiet ;;
        esac
        secs=$(($(date +%s) - s))
        if [[ $variant == fusion ]]; then
            "$PEFT" eval "${common[@]}" "${adapters[@]}" --fusion "$dir" --data "$OUT/test.csv" >"$dir/test_eval.txt"
        else
            "$PEFT" eval "${common[@]}" --adapter "$dir" --data "$OUT/test.csv" >"$dir/test_eval.txt"
        fi
        printf '%s\t%s\t%s\t%s\t%s\n' "$seed" "$variant" "$(acc <"$dir/test_eval.txt")" "$(best_dev "$dir")" "$secs" >>"$results"
        tail -1 "$results"
    done
done
say "done"
