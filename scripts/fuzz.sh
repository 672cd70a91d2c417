#!/usr/bin/env bash
# Fuzzes the file parsers with cargo-fuzz (libFuzzer): the safetensors header, torch `.bin`
# checkpoints, AdapterHub / Hugging Face config files, and data files (CSV / TSV / JSONL). Each target runs for a bounded
# time (FUZZ_SECONDS, default 60) from the seeds in fuzz/seeds (plus the fixtures' files when
# tests/fixtures exists), then the executions per target are printed. A crash leaves its
# input in fuzz/artifacts/<target>/ and makes the script exit non-zero: turn it into a regression
# test (tests/reliability_*.rs have the earlier ones).
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`, done here when
# missing). Usage: scripts/fuzz.sh [target ...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SECS=${FUZZ_SECONDS:-60}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(safetensors_header torch_bin adapterhub_config data_file)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly}

cd fuzz
mkdir -p logs
# Build every target first (one compile of the instrumented crate), so the timed runs only fuzz.
cargo "+$TOOLCHAIN" fuzz build

FIX="$ROOT/tests/fixtures"
seed() {
    local t=$1 dir=corpus/$1
    mkdir -p "$dir"
    cp -f seeds/"$t"/* "$dir"/
    [ -d "$FIX" ] || return 0
    case $t in
        safetensors_header)
            find "$FIX" -name '*.safetensors' -size -64k -exec sh -c 'cp -f "$1" "$2/fixture-$(echo "$1" | md5sum | cut -c1-12)"' _ {} "$dir" \; ;;
        torch_bin)
            find "$FIX" -name '*.bin' -size -64k -exec sh -c 'cp -f "$1" "$2/fixture-$(echo "$1" | md5sum | cut -c1-12)"' _ {} "$dir" \; ;;
        adapterhub_config)
            find "$FIX" -name '*config*.json' -exec sh -c 'cp -f "$1" "$2/fixture-$(echo "$1" | md5sum | cut -c1-12)"' _ {} "$dir" \; ;;
    esac
    chmod -R u+w "$dir"
}

declare -A MAXLEN=([safetensors_header]=65536 [torch_bin]=65536 [adapterhub_config]=8192 [data_file]=8192)
status=0
summary=()
for t in "${TARGETS[@]}"; do
    seed "$t"
    log=logs/$t.log
    echo "== $t: fuzzing for ${SECS}s"
    if cargo "+$TOOLCHAIN" fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$SECS" -max_len="${MAXLEN[$t]:-8192}" -print_final_stats=1 >"$log" 2>&1; then
        result=clean
    else
        result="CRASH (see fuzz/$log and fuzz/artifacts/$t/)"
        status=1
    fi
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1 || true)
    [ -n "$runs" ] || runs=$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -n 1 || echo "?")
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+' || echo "?")
    summary+=("$t: $runs executions in ${SECS}s, coverage $cov edges: $result")
    tail -n 2 "$log"
done
echo
echo "fuzzing summary:"
printf '  %s\n' "${summary[@]}"
exit $status
