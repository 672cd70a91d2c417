#!/usr/bin/env python3
"""Dev accuracy of `peft train` next to AdapterHub's `adapters` library (PyTorch) on the same
examples, in the same order and batches, with the same dev set, lr schedule, batch size, max
length, number of steps and seeds (issue 19 item 2).

For each seed k the script writes one training CSV in a seeded order (the same examples for every
seed, order k) and one dev CSV (the same for every seed), then trains
  - ours:     peft train --batch-order file ... (the file's order, cut into batches in turn), and
  - theirs:   AutoAdapterModel + add_adapter(double_seq_bn / seq_bn) + add_classification_head,
              model.train() (dropout on, as the library trains), AdamW (β 0.9/0.999, ε 1e-8, weight
              decay 0), HF's linear schedule, clip_grad_norm_(max-grad-norm), batches of the same
              rows padded to the longest row in the batch,
and prints the dev accuracy of each (mean ± std over seeds) and the training speed in real
(non-padding) tokens per second of training time (dev evaluation excluded). Writes a Markdown
table and a JSON file of every run.

  python3 bench/accuracy/run.py --peft target/release/peft --model .cache/models/all-MiniLM-L6-v2 \
      --data .cache/data/rotten_tomatoes/all.csv --train-examples 2000 --dev-examples 800 \
      --seeds 5 --out bench/results/accuracy-lavapipe-cpu

Needs `torch` and `adapters` (pip install adapters); `--only peft` runs ours alone.
"""
import argparse
import csv
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time


def read_rows(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [(r["text"], r["label"]) for r in rows]


def write_rows(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


def prepare(args, work):
    """dev = the first --dev-examples of a shuffle with --data-seed, train = the next
    --train-examples; one training file per seed with those examples in a seed-k order."""
    rows = read_rows(args.data)
    random.Random(args.data_seed).shuffle(rows)
    dev, pool = rows[: args.dev_examples], rows[args.dev_examples :]
    train = pool[: args.train_examples]
    if len(train) < args.train_examples:
        sys.exit(f"{args.data} has {len(rows)} rows: too few for {args.dev_examples} dev + {args.train_examples} train")
    os.makedirs(work, exist_ok=True)
    write_rows(os.path.join(work, "dev.csv"), dev)
    files = []
    for k in range(args.seeds):
        order = list(train)
        random.Random(1000 + k).shuffle(order)
        p = os.path.join(work, f"train-seed{k}.csv")
        write_rows(p, order)
        files.append(p)
    return files, os.path.join(work, "dev.csv")


def run_peft(args, seed, train_csv, dev_csv, out):
    cmd = [args.peft, "train", "--model", args.model, "--train", train_csv, "--dev", dev_csv,
           "--batch-order", "file", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--lr", str(args.lr), "--max-length", str(args.max_length), "--seed", str(seed),
           "--config", args.config, "--reduction-factor", str(args.reduction_factor),
           "--max-grad-norm", str(args.max_grad_norm), "--warmup-ratio", "0", "--weight-decay", "0",
           "--out", out] + args.peft_arg
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"peft train failed (seed {seed}):\n{r.stdout}\n{r.stderr}")
    epochs = []
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            v = json.loads(line)
            if "dev_accuracy" in v:
                epochs.append(v["dev_accuracy"])
    m = re.search(r"([0-9.]+) real tokens/s over (\d+) steps", r.stdout + r.stderr)
    if not m:
        sys.exit(f"no 'real tokens/s' line in peft's output:\n{r.stdout}\n{r.stderr}")
    return {"trainer": "peft", "seed": seed, "dev_accuracy": epochs[-1], "dev_accuracy_per_epoch": epochs,
            "tokens_per_s": float(m.group(1)), "steps": int(m.group(2)), "wall_s": wall}


def run_adapters(args, seed, train_csv, dev_csv):
    import torch
    from adapters import AutoAdapterModel
    from transformers import AutoTokenizer

    device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(seed)
    random.seed(seed)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoAdapterModel.from_pretrained(args.model)
    config = "double_seq_bn" if args.config == "houlsby" else "seq_bn"
    from adapters import AdapterConfig
    model.add_adapter("task", config=AdapterConfig.load(config, reduction_factor=args.reduction_factor))
    train_rows, dev_rows = read_rows(train_csv), read_rows(dev_csv)
    labels = sorted({l for _, l in train_rows})
    index = {l: i for i, l in enumerate(labels)}
    model.add_classification_head("task", num_labels=len(labels))
    model.train_adapter("task")
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    batches = [train_rows[i : i + args.batch_size] for i in range(0, len(train_rows), args.batch_size)]
    total = len(batches) * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (total - s) / max(1, total)))

    def encode(rows):
        enc = tok([t for t, _ in rows], truncation=True, max_length=args.max_length, padding=True,
                  return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()}

    def evaluate():
        model.eval()
        right = 0
        with torch.no_grad():
            for i in range(0, len(dev_rows), 64):
                rows = dev_rows[i : i + 64]
                logits = model(**encode(rows)).logits
                pred = logits.argmax(-1).tolist()
                right += sum(labels[p] == l for p, (_, l) in zip(pred, rows))
        model.train()
        return right / len(dev_rows)

    loss_fn = torch.nn.CrossEntropyLoss()
    epochs, train_time, real_tokens = [], 0.0, 0
    model.train()
    for _ in range(args.epochs):
        t0 = time.time()
        for rows in batches:
            enc = encode(rows)
            y = torch.tensor([index[l] for _, l in rows], device=device)
            loss = loss_fn(model(**enc).logits, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad()
            real_tokens += int(enc["attention_mask"].sum())
        if device != "cpu":
            torch.cuda.synchronize()  # the epoch's kernels finished before its time is taken
        train_time += time.time() - t0
        epochs.append(evaluate())
    return {"trainer": "adapters", "torch_device": device, "seed": seed, "dev_accuracy": epochs[-1], "dev_accuracy_per_epoch": epochs,
            "tokens_per_s": real_tokens / train_time, "steps": total, "wall_s": train_time}


def summary(runs, trainer):
    rs = [r for r in runs if r["trainer"] == trainer]
    if not rs:
        return None
    acc = [r["dev_accuracy"] for r in rs]
    tps = [r["tokens_per_s"] for r in rs]
    sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
    return {"n": len(rs), "mean": statistics.mean(acc), "std": sd, "tokens_per_s": statistics.median(tps)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peft", default="target/release/peft")
    p.add_argument("--model", default=".cache/models/all-MiniLM-L6-v2")
    p.add_argument("--data", default=".cache/data/rotten_tomatoes/all.csv")
    p.add_argument("--train-examples", type=int, default=2000)
    p.add_argument("--dev-examples", type=int, default=800)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0,
                   help="run seeds FIRST..SEEDS-1 only (e.g. a second seed after an earlier call ran seed 0)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--config", choices=["houlsby", "pfeiffer"], default="houlsby")
    p.add_argument("--reduction-factor", type=int, default=16)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--torch-device", default="", help="the adapters library's device: cpu, cuda (default: cuda where available)")
    p.add_argument("--only", choices=["both", "peft", "adapters"], default="both")
    p.add_argument("--device-name", default="", help="the device, for the table (e.g. 'lavapipe, 2-core EPYC')")
    p.add_argument("--peft-arg", action="append", default=[], help="extra argument for peft train (repeat)")
    p.add_argument("--out", required=True, help="output prefix: writes OUT.md and OUT.json")
    p.add_argument("--combine", nargs="+", metavar="JSON",
                   help="no training: one table from the runs of earlier OUT.json files (e.g. --only peft and --only adapters)")
    args = p.parse_args()
    if args.combine:
        runs, saved = [], None
        for path in args.combine:
            with open(path) as f:
                v = json.load(f)
            runs += v["runs"]
            saved = saved or v["args"]
        # The table's settings line from the runs' own settings (the first file's), not this call's.
        out, name = args.out, args.device_name
        args = argparse.Namespace(**saved)
        args.out, args.device_name = out, name or args.device_name
        write_table(args, runs)
        return

    work = args.out + ".work"
    files, dev = prepare(args, work)
    runs = []
    for k, train_csv in enumerate(files):
        if k < args.first_seed:
            continue
        for trainer in ("peft", "adapters"):
            if args.only not in ("both", trainer):
                continue
            r = (run_peft(args, k, train_csv, dev, os.path.join(work, f"peft-seed{k}")) if trainer == "peft"
                 else run_adapters(args, k, train_csv, dev))
            r["load_avg"] = os.getloadavg()[0]
            print(json.dumps(r), flush=True)
            runs.append(r)
    with open(args.out + ".json", "w") as f:
        json.dump({"args": vars(args), "runs": runs}, f, indent=1)
    write_table(args, runs)


def seeds_run(runs):
    """Which seeds each trainer ran, e.g. `peft 0, 1; adapters 0, 1` (from the runs, not the
    arguments: a combined table may hold more seeds of one trainer than of the other)."""
    parts = []
    for trainer in ("peft", "adapters"):
        seeds = sorted({r["seed"] for r in runs if r["trainer"] == trainer})
        if seeds:
            parts.append(f"{trainer} " + ", ".join(str(k) for k in seeds))
    return "; ".join(parts)


def write_table(args, runs):
    lines = [f"# Dev accuracy: peft train vs the adapters library ({args.device_name or 'device not named'})", "",
             f"{args.train_examples} training examples (Rotten Tomatoes), {args.dev_examples} dev, {args.epochs} epoch(s), "
             f"{args.config} rf {args.reduction_factor}, AdamW lr {args.lr} linear decay, batch {args.batch_size}, "
             f"max length {args.max_length}, clip {args.max_grad_norm}; same examples, order and batches per seed; "
             f"seeds run: {seeds_run(runs)}.", "",
             "| trainer | dev accuracy (mean ± std) | seeds | real tokens/s (median) |", "|---|---|---|---|"]
    for trainer in ("peft", "adapters"):
        s = summary(runs, trainer)
        if s:
            lines.append(f"| {trainer} | {s['mean']:.4f} ± {s['std']:.4f} | {s['n']} | {s['tokens_per_s']:.0f} |")
    lines += ["", "Per seed:", "", "| trainer | seed | dev accuracy | per epoch | tokens/s | load avg |", "|---|---|---|---|---|---|"]
    for r in runs:
        per = ", ".join(f"{a:.4f}" for a in r["dev_accuracy_per_epoch"])
        lines.append(f"| {r['trainer']} | {r['seed']} | {r['dev_accuracy']:.4f} | {per} | {r['tokens_per_s']:.0f} | {r['load_avg']:.1f} |")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
