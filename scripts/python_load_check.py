"""Checks that the Python `adapters` library's plain calls load what `peft train` / `peft fuse` wrote
(torch `.bin` files, read without `use_safetensors=True`) and give `peft predict`'s logits.

usage:
  python scripts/python_load_check.py --model MODEL_DIR --adapter OUT [--predictions PRED.jsonl]
  python scripts/python_load_check.py --model MODEL_DIR --adapter SRC1 --adapter SRC2 --fusion FUSE_OUT [--predictions PRED.jsonl]
PRED.jsonl is `peft predict --out` over the same model, adapter(s) / fusion; --max-length must match.
Any head kind: classification, regression and multi-label logits per text; tagging logits per word
(the text split at whitespace, the word's first sub-token).
Every parameter the `.bin` files hold is checked against what Python loaded, bit for bit, and each
`.bin` file is also read with `torch.load(path, weights_only=True)`. Exits 1 when a check fails.
"""
import argparse, json, os, sys
import numpy as np, torch
from transformers import AutoTokenizer, BertTokenizer
from adapters import AutoAdapterModel
from adapters.composition import Fuse

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--adapter", action="append", required=True)
ap.add_argument("--fusion")
ap.add_argument("--predictions")
ap.add_argument("--max-length", type=int, default=128)
ap.add_argument("--tolerance", type=float, default=1e-4, help="max relative logit difference")
a = ap.parse_args()

m = AutoAdapterModel.from_pretrained(a.model)  # BertAdapterModel, RobertaAdapterModel, ... as config.json says
bins = []
if a.fusion:
    names = [m.load_adapter(d, with_head=False) for d in a.adapter]   # the two lines a user writes
    m.load_adapter_fusion(a.fusion)                                   # (plain calls: .bin files)
    head = json.load(open(os.path.join(a.fusion, "head_config.json")))["name"]
    m.set_active_adapters(Fuse(*names)); m.active_head = head
    bins += [os.path.join(d, "pytorch_adapter.bin") for d in a.adapter]
    bins += [os.path.join(a.fusion, f) for f in ("pytorch_model_adapter_fusion.bin", "pytorch_model_head.bin")]
else:
    name = m.load_adapter(a.adapter[0])
    m.set_active_adapters(name)
    bins += [os.path.join(a.adapter[0], f) for f in ("pytorch_adapter.bin", "pytorch_model_head.bin")]
m.eval()
params = dict(m.named_parameters(remove_duplicate=False))  # ln_before: one LayerNorm, two names
ok = True
for b in bins:
    sd = torch.load(b, weights_only=True)
    same = all(k in params and torch.equal(params[k], v) for k, v in sd.items())
    print(f"{b}: torch.load(weights_only=True) reads {len(sd)} tensors; loaded into the model bit for bit: {same}")
    ok &= same

if a.predictions:
    rows = [json.loads(l) for l in open(a.predictions)]
    tj = os.path.join(a.model, "tokenizer.json")
    tok = AutoTokenizer.from_pretrained(a.model) if os.path.exists(tj) else BertTokenizer(os.path.join(a.model, "vocab.txt"))
    texts = [r["text"] for r in rows]
    if "tags" in rows[0]:
        # A tagging head: peft predict splits each text at whitespace and gives the logits of each
        # word's first sub-token, in word order.
        words = [t.split() for t in texts]
        if os.path.exists(tj):  # RoBERTa-style byte-level BPE needs it for pre-split words, as peft does
            tok = AutoTokenizer.from_pretrained(a.model, add_prefix_space=True)
        enc = tok(words, is_split_into_words=True, padding=True, truncation=True, max_length=a.max_length,
                  return_tensors="pt")
        with torch.no_grad():
            full = m(**enc).logits.numpy()
        picked = []
        for i in range(len(rows)):
            seen = set()
            for t, w in enumerate(enc.word_ids(i)):
                if w is not None and w not in seen:
                    seen.add(w)
                    picked.append(full[i, t])
        logits = np.array(picked)
        ours = np.concatenate([np.array(r["logits"]).reshape(-1, full.shape[-1]) for r in rows])
    else:
        enc = tok(texts, padding=True, truncation=True, max_length=a.max_length, return_tensors="pt")
        with torch.no_grad():
            logits = m(**enc).logits.numpy()
        ours = np.array([r["logits"] for r in rows])
    diff = np.abs(logits - ours).max()
    rel = diff / max(np.abs(logits).max(), 1e-30)
    print(f"logits of {len(rows)} texts: python {logits[0].tolist()}, peft {ours[0].tolist()} (first text)")
    print(f"max abs difference {diff:.3e}, relative {rel:.3e} (tolerance {a.tolerance:g})")
    ok &= bool(rel <= a.tolerance)
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
