#!/usr/bin/env bash
# The NER demo (`make ner-demo`): a Houlsby adapter with a tagging head (AdapterHub's
# `add_tagging_head`: one Linear over every token) trained with `peft train --head-type tagging`
# on CoNLL columns, then the dev set's entity-level F1 (seqeval's default mode: BIO chunks,
# exact spans) from `peft eval`, and the word-level tags of a new sentence from `peft predict`.
#
# Data: tests/fixtures/ner-demo/ (train.conll: 600 sentences, dev.conll: 200; PER / LOC / ORG in
# BIO), a small synthetic set made by tests/fixtures/make_ner_demo.py from templates, with dev
# names, places and organisations that training never shows. No registry package we searched
# (the PyPI / npm / Debian lists) ships a real CoNLL-style NER set; NER_TRAIN / NER_DEV take any
# CoNLL file (word first, tag last) or JSONL ({"tokens": [...], "tags": [...]}) instead.
#
# usage: scripts/ner-demo.sh     (PEFT=peft binary, default target/release/peft; NER_DEMO_OUT=output
#                                 folder, default runs/ner-demo; NER_DEMO_ARGS=extra train options)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
PEFT="${PEFT:-$here/target/release/peft}"
OUT="${NER_DEMO_OUT:-runs/ner-demo}"
MODEL="${NER_DEMO_MODEL:-.cache/models/all-MiniLM-L6-v2}"
TRAIN="${NER_TRAIN:-tests/fixtures/ner-demo/train.conll}"
DEV="${NER_DEV:-tests/fixtures/ner-demo/dev.conll}"
ARGS="${NER_DEMO_ARGS:---epochs 4 --batch-size 16 --lr 2e-3 --max-length 64}"
[[ -x "$PEFT" ]] || { echo "ner-demo: no peft binary at $PEFT (cargo build --release)"; exit 1; }
[[ -d "$MODEL" ]] || bash scripts/fetch-model.sh

# shellcheck disable=SC2086
"$PEFT" train --model "$MODEL" --train "$TRAIN" --dev "$DEV" --head-type tagging --config houlsby \
    $ARGS --out "$OUT"
echo "ner-demo: dev entity scores of the saved (best) epoch:"
"$PEFT" eval --model "$MODEL" --adapter "$OUT" --data "$DEV" --max-length 64
"$PEFT" predict --model "$MODEL" --adapter "$OUT" --text "Ingrid Holm flew from Toronto to meet Lunar Shipping Group ."
