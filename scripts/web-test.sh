#!/usr/bin/env bash
# The browser test: builds the page (`make web`, reused when up to date), serves web/ on 127.0.0.1,
# runs headless Chromium (WebGPU on its SwiftShader) on the page's test mode, which trains a
# Houlsby adapter on the tiny fixture model and writes the result (losses, dev accuracy, logits,
# the adapter folder zipped, base64) into the DOM; then checks that the loss fell, that the native
# `peft predict` on the downloaded adapter gives the browser's logits within 1e-4, and that
# `peft eval` loads it; then the same job with one resident layer and the rest streamed must train
# bit for bit as the resident one; a screenshot goes to bench/results/web-swiftshader.png.
#
# Environment (all optional): WEB_MODEL (a model folder; default tiny-bert + tests/fixtures/web/vocab.txt),
# WEB_TRAIN / WEB_DEV (CSVs), WEB_OPTIONS (training options, JSON), WEB_SCREENSHOT (PNG path, empty:
# none), WEB_STREAMED (default 1: the job again with streamed layers, bit for bit), WEB_F16 (default 1:
# again with f16 weights), WEB_LOSS_MUST_FALL (default 1; 0 for runs too short to tell, e.g. speed measurements),
# CHROMIUM (the browser), PEFT (the native binary; default: cargo's debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
say() { echo "web-test: $*" >&2; }
start=$(date +%s)

find_chromium() { command -v chromium || command -v chromium-browser || command -v google-chrome || true; }
CHROMIUM=${CHROMIUM:-$(find_chromium)}
if [ -z "$CHROMIUM" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing chromium (Debian's; it runs WebGPU headless on its SwiftShader)"
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    CHROMIUM=$(find_chromium)
fi
[ -n "$CHROMIUM" ] || { say "no chromium: apt-get install chromium (or set CHROMIUM)"; exit 1; }
make --no-print-directory web
if [ -z "${PEFT:-}" ]; then
    ${CARGO:-cargo} build --quiet --bin peft
    PEFT=$root/target/debug/peft
fi

work=$(mktemp -d /tmp/peft-web-test.XXXXXX)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# The site: the page and the job's files.
site=$work/site
mkdir -p "$site/job/model"
ln -s "$root/web/index.html" "$root/web/app.js" "$root/web/pkg" "$site/"
if [ -n "${WEB_MODEL:-}" ]; then
    model=$(cd "$WEB_MODEL" && pwd)
    for f in config.json model.safetensors vocab.txt tokenizer.json tokenizer_config.json; do
        [ -e "$model/$f" ] && ln -s "$model/$f" "$site/job/model/$f"
    done
else
    ln -s "$root/tests/fixtures/tiny-bert/base/config.json" "$root/tests/fixtures/tiny-bert/base/model.safetensors" \
        "$root/tests/fixtures/web/vocab.txt" "$site/job/model/"
fi
model_dir=$site/job/model
train=${WEB_TRAIN:-tests/fixtures/web/train.csv}
dev=${WEB_DEV:-tests/fixtures/web/dev.csv}
ln -s "$(cd "$(dirname "$train")" && pwd)/$(basename "$train")" "$site/job/train.csv"
ln -s "$(cd "$(dirname "$dev")" && pwd)/$(basename "$dev")" "$site/job/dev.csv"
options=${WEB_OPTIONS:-'{"epochs":100,"lr":0.01,"batch_size":16,"max_length":16,"reduction_factor":2,"seed":3}'}
sentences=$(python3 -c 'import csv,json,sys; print(json.dumps([r["text"] for r in csv.DictReader(open(sys.argv[1]))]))' "$dev")

python3 scripts/web-serve.py "$site" --port-file "$work/port" &
server_pid=$!
for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")
page_url() {
    local query
    query=$(python3 -c 'import json,sys,urllib.parse as u; print(u.urlencode({"test":"1","model":"job/model","train":"job/train.csv","dev":"job/dev.csv","options":sys.argv[1],"sentences":sys.argv[2]}))' "$1" "$sentences")
    echo "http://127.0.0.1:$port/index.html?$query"
}
url=$(page_url "$options")
chrome() {
    timeout 900 "$CHROMIUM" --headless --no-sandbox --enable-unsafe-webgpu --use-webgpu-adapter=swiftshader \
        --user-data-dir="$work/profile" --window-size=1000,1250 "$@" "$url" 2>>"$work/chromium.log"
}

say "training in headless Chromium (WebGPU on SwiftShader) at $url"
t0=$(date +%s)
chrome --dump-dom >"$work/dom.html" || { tail -20 "$work/chromium.log" >&2; say "chromium failed"; exit 1; }
browser_secs=$(( $(date +%s) - t0 ))

mkdir -p "$work/out"
python3 - "$work/dom.html" "$work/out" "${WEB_LOSS_MUST_FALL:-1}" <<'PY'
import base64, html, io, json, re, sys, zipfile
dom, out, must_fall = sys.argv[1], sys.argv[2], sys.argv[3] != "0"
sys.path.insert(0, "scripts")
from web_result import page_result
r = page_result(dom, "the page")
rep = r["report"]
losses = rep["losses"]
print(f"web-test: GPU: {r['gpu']}")
print("web-test: " + r["gpu_details"].replace("\n", "; "))
acc = rep["dev_accuracy"]
print(f"web-test: memory: {rep['memory']}")
print(f"web-test: {len(losses)} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}; dev accuracy {acc[0]:.4f} after "
      f"epoch 1, {acc[-1]:.4f} after epoch {len(acc)}; {rep['tokens_per_second']:.1f} real tokens/s "
      f"({rep['real_tokens']} tokens in {rep['seconds']:.2f} s of training steps)")
k = max(1, len(losses) // 4)
first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
if must_fall and not last < first:
    sys.exit(f"web-test: the loss did not fall (mean of the first {k} steps {first:.4f}, of the last {k} {last:.4f})")
for p in r["predictions"]:
    print(f"web-test: browser logits {p['logits']} for {p['text']!r}")
zipfile.ZipFile(io.BytesIO(base64.b64decode(r["zip_base64"]))).extractall(out)
json.dump(r, open(f"{out}/result.json", "w"))
PY
adapter=$work/out/adapter
say "adapter files from the browser: $(cd "$adapter" && echo *)"

# The native build on the same files: logits within 1e-4, and the adapter loads for eval.
"$PEFT" predict --model "$model_dir" --adapter "$adapter" --data "$dev" --out "$work/native.jsonl" 2>>"$work/native.log"
python3 - "$work/out/result.json" "$work/native.jsonl" <<'PY'
import json, sys
browser = json.load(open(sys.argv[1]))["predictions"]
native = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
if len(browser) != len(native):
    sys.exit(f"web-test: {len(browser)} browser predictions, {len(native)} native")
worst = 0.0
for b, n in zip(browser, native):
    if b["text"] != n["text"] or b["label"] != n["label"]:
        sys.exit(f"web-test: browser {b['text']!r} -> {b['label']}, native {n['text']!r} -> {n['label']}")
    worst = max([worst] + [abs(x - y) for x, y in zip(b["logits"], n["logits"])])
print(f"web-test: native peft predict on the browser's adapter: {len(native)} logits rows, worst difference {worst:.2e}")
if not worst <= 1e-4:
    sys.exit(f"web-test: browser and native logits differ by {worst:.2e} (> 1e-4)")
PY
# `peft eval` loads the folder and scores the dev set as the page did after the epoch it kept.
"$PEFT" eval --model "$model_dir" --adapter "$adapter" --data "$dev" 2>>"$work/native.log" | tail -1 >"$work/eval.txt"
python3 - "$work/out/result.json" "$work/eval.txt" <<'PY'
import json, re, sys
rep = json.load(open(sys.argv[1]))["report"]
# The page keeps (and exports) its best dev epoch, as peft train does.
page = rep["dev_accuracy"][rep["best_epoch"] - 1]
line = open(sys.argv[2]).read().strip()
m = re.search(r"accuracy=([0-9.]+)", line)
if not m:
    sys.exit(f"web-test: peft eval printed no accuracy: {line!r}")
print(f"web-test: native peft eval on the browser's adapter: {line} (the page: accuracy {page:.4f})")
if abs(float(m.group(1)) - page) > 1e-4:
    sys.exit(f"web-test: native eval accuracy {m.group(1)} differs from the page's {page:.4f}")
PY

# The job again with one training option changed (`name`, option `key`, JSON `value`): the page's
# DOM in $work/dom-<name>.html.
rerun() {
    local name=$1 key=$2 value=$3 changed
    changed=$(python3 -c 'import json,sys; o=json.loads(sys.argv[1]); o[sys.argv[2]]=json.loads(sys.argv[3]); print(json.dumps(o))' "$options" "$key" "$value")
    say "again with $key = $value: $changed"
    url=$(page_url "$changed")
    chrome --dump-dom >"$work/dom-$name.html" || { tail -20 "$work/chromium.log" >&2; say "chromium failed"; exit 1; }
    url=$(page_url "$options")
}

# The same job with one layer on the GPU and the others streamed (the memory plan's
# `resident_layers`, as `--resident-layers 1`): the page must report the streamed plan and train
# bit for bit as resident (the native engine's streaming is bit-identical; so must the browser's be).
if [ "${WEB_STREAMED:-1}" != 0 ]; then
    rerun streamed resident_layers 1
    python3 - "$work/dom-streamed.html" "$work/out/result.json" <<'PY'
import json, re, sys
sys.path.insert(0, "scripts")
from web_result import page_result
r = page_result(sys.argv[1], "the streamed run")
s, resident = r["report"], json.load(open(sys.argv[2]))["report"]
print(f"web-test: streamed run: memory {s['memory']}")
print(f"web-test: resident run: memory {resident['memory']}")
if "1 of " not in s["memory"] or "streamed per step" not in s["memory"]:
    sys.exit(f"web-test: the streamed run's plan is not streamed: {s['memory']}")
if s["losses"] != resident["losses"] or s["dev_accuracy"] != resident["dev_accuracy"]:
    diff = max(abs(a - b) for a, b in zip(s["losses"], resident["losses"]))
    sys.exit(f"web-test: streamed and resident runs differ (worst loss difference {diff:.3e})")
print(f"web-test: streamed = resident bit for bit ({len(s['losses'])} losses, dev accuracy {s['dev_accuracy'][-1]:.4f}); "
      f"{s['tokens_per_second']:.1f} vs {resident['tokens_per_second']:.1f} real tokens/s")
PY
fi

# And with the layers' matrices in f16 (`"precision": "f16"`, as `--precision f16`; SwiftShader
# offers no shader-f16, so the page's default there is f32): the plan says f16 and holds fewer
# layer-weight bytes, and the run trains as the f32 one does up to f16's rounding of the weights.
if [ "${WEB_F16:-1}" != 0 ]; then
    rerun f16 precision '"f16"'
    python3 - "$work/dom-f16.html" "$work/out/result.json" <<'PY'
import json, re, sys
sys.path.insert(0, "scripts")
from web_result import page_result
r = page_result(sys.argv[1], "the f16 run")
h, f = r["report"], json.load(open(sys.argv[2]))["report"]
print(f"web-test: f16 run: memory {h['memory']}")
if "matrices in f16" not in h["memory"]:
    sys.exit(f"web-test: the f16 run's plan is not f16: {h['memory']}")
# The plan prints MiB to one decimal, which the tiny model's layers round to the same figure in
# both precisions; the bytes themselves are compared in tests/memory.rs.
weights = lambda rep: float(re.search(r"layer weights ([0-9.]+)", rep["memory"]).group(1))
if weights(h) > weights(f):
    sys.exit(f"web-test: f16 layer weights {weights(h)} MiB, above f32's {weights(f)} MiB")
# 100 epochs on 8 sentences at lr 1e-2 amplify f16's rounding of the weights into a different path
# later on, so the runs are compared at the first step (the same batch through weights differing
# by f16's rounding) and the f16 run must learn on its own.
first = abs(h["losses"][0] - f["losses"][0])
print(f"web-test: f16 vs f32 run: first loss {h['losses'][0]:.6f} vs {f['losses'][0]:.6f} (difference {first:.2e}); "
      f"last {h['losses'][-1]:.4f} vs {f['losses'][-1]:.4f}; dev accuracy {h['dev_accuracy'][-1]:.4f} vs {f['dev_accuracy'][-1]:.4f}")
if h["losses"] == f["losses"]:
    sys.exit("web-test: the f16 run's losses equal the f32 run's bit for bit: the weights were not rounded")
if not first <= 1e-3:
    sys.exit(f"web-test: f16 and f32 first losses differ by {first:.3e} (> 1e-3)")
if not h["losses"][-1] < 0.75 * h["losses"][0]:
    sys.exit(f"web-test: the f16 run's loss did not fall: {h['losses'][0]:.4f} -> {h['losses'][-1]:.4f}")
PY
fi

if [ -n "${WEB_SCREENSHOT-bench/results/web-swiftshader.png}" ]; then
    shot=${WEB_SCREENSHOT:-bench/results/web-swiftshader.png}
    mkdir -p "$(dirname "$shot")"
    case $shot in /*) ;; *) shot=$root/$shot ;; esac
    chrome --screenshot="$shot" >/dev/null || say "screenshot failed (see $work/chromium.log)"
    say "screenshot: $shot"
fi
say "passed in $(( $(date +%s) - start )) s (browser run $browser_secs s)"
