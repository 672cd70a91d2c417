#!/usr/bin/env python3
"""The reference side of `peft bench`: the same workloads in PyTorch eager (fp32 with TF32 off, and
bf16 autocast), printing the same table and JSON fields, so bench/compare.py can put both side by
side. Run on the same card in the same session as `peft bench`.

  python3 bench/pytorch_baseline.py --json torch.jsonl            # CUDA, the issue's shapes
  python3 bench/pytorch_baseline.py --device cpu --small --json x  # a quick check of the script

Workloads (shapes as `peft bench`'s defaults):
  adapter_forward / _backward  y = x + W_up·gelu(W_down·x + b_down) + b_up   (T=4096, d=768, m=64)
  fusion_forward / _backward   AdapterHub BertFusion, dynamic (query, key, value; value identity-
                               initialised; residual added after), N=8 adapters
  matmul                       4096³
  train_step_<L>x<d>           BertForSequenceClassification (dropout 0) with Houlsby adapters
                               (reduction factor 16, SiLU) hooked after attention.output.dense and
                               output.dense, base frozen, pooler + classifier trained (the same
                               parameters as AdapterHub's head), AdamW; batch 32 × 128
  demo_epoch                   MiniLM-L6 shape, one epoch of the token lengths in
                               bench/rt-lengths.txt, batches of 32 in file order, each padded
                               to its longest (dynamic padding)
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}

PEAKS = {"h200": (4.8e12, 67e12), "h100": (3.35e12, 67e12)}


class Timer:
    def __init__(self, device):
        self.device = device

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def kernel(self, fn, warmup, reps):
        """Median of per-repetition times: CUDA events on a GPU, wall clock + sync on a CPU."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(reps):
            if self.device.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) * 1e-3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return times, ("cuda-events" if self.device.type == "cuda" else "wall")

    def wall(self, fn, warmup, reps):
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return times


def measurement(name, shape, variant, times, clock, flops, bytes_, peaks, **extra):
    med = statistics.median(times)
    m = dict(name=name, shape=shape, variant=variant, median_us=med * 1e6, min_us=min(times) * 1e6,
             samples=len(times), clock=clock, flops=flops, bytes=bytes_, gflops=flops / med * 1e-9,
             gbps=bytes_ / med * 1e-9, floor_us=None, pct_of_floor=None, max_rel_err=None)
    if peaks:
        floor = max(bytes_ / peaks[0], flops / peaks[1])
        if floor > 0:
            m["floor_us"] = floor * 1e6
            m["pct_of_floor"] = 100 * floor / med
    if extra:
        m["extra"] = extra
    return m


def row(m):
    f = lambda v, p: "-" if v is None else f"{v:.{p}f}"
    return (f"{m['name']:<24} {m['shape']:<28} {m['variant']:<10} {m['median_us']:>11.1f} {m['gflops']:>9.1f} "
            f"{m['gbps']:>9.1f} {f(m['floor_us'], 1):>9} {f(m['pct_of_floor'], 0):>7}")


class Adapter(nn.Module):
    def __init__(self, d, m, act):
        super().__init__()
        self.down, self.up, self.act = nn.Linear(d, m), nn.Linear(m, d), act

    def forward(self, x):
        return x + self.up(self.act(self.down(x)))


class Fusion(nn.Module):
    """AdapterHub's BertFusion ("dynamic"): query/key Linear(d, d), value Linear(d, d, bias=False)."""

    def __init__(self, d):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d, bias=False)
        with torch.no_grad():
            self.value.weight.copy_(torch.eye(d) + 1e-6)

    def forward(self, h, z, r):  # h, r: [T, d]; z: [T, N, d]
        q = self.query(h)
        k = self.key(z)
        v = self.value(z)
        scores = torch.squeeze(torch.matmul(q.unsqueeze(1), k.transpose(-2, -1)), dim=1)
        p = torch.softmax(scores, dim=-1)
        ctx = torch.squeeze(torch.matmul(p.unsqueeze(1), v), dim=1)
        return ctx + r


def kernels(args, dev, timer, peaks, out):
    T, d, m, N, n = args.tokens, args.hidden, args.bottleneck, args.adapters, args.matmul
    g = torch.Generator(device="cpu").manual_seed(0)
    rnd = lambda *s: torch.rand(*s, generator=g).mul(2).sub(1).to(dev)
    for variant, ac in [("torch-fp32", None), ("torch-bf16", torch.bfloat16)]:
        ctx = (lambda: torch.autocast(dev.type, dtype=ac)) if ac else (lambda: torch.autocast(dev.type, enabled=False))
        # Adapter.
        ad = Adapter(d, m, nn.GELU()).to(dev)
        x, dy = rnd(T, d).requires_grad_(True), rnd(T, d)
        shape = f"T={T} d={d} m={m}"
        fwd_flops, fwd_bytes = 4.0 * T * d * m, 4.0 * (2 * T * d + T * m + 2 * d * m + d + m)
        bwd_flops, bwd_bytes = 8.0 * T * d * m, 4.0 * (3 * T * d + T * m + 4 * d * m + 2 * d + 2 * m)

        def afwd():
            with torch.no_grad(), ctx():
                ad(x)

        def aboth():
            with ctx():
                y = ad(x)
            y.backward(dy)

        t, c = timer.kernel(afwd, args.warmup, args.reps)
        out.append(measurement("adapter_forward", shape, variant, t, c, fwd_flops, fwd_bytes, peaks))
        t, c = timer.kernel(aboth, args.warmup, args.reps)
        out.append(measurement("adapter_forward_backward", shape, variant, t, c, fwd_flops + bwd_flops,
                               fwd_bytes + bwd_bytes, peaks))
        # Fusion (AdapterHub's naive formula: key and value per adapter).
        fu = Fusion(d).to(dev)
        h, z, r, do = rnd(T, d).requires_grad_(True), rnd(T, N, d).requires_grad_(True), rnd(T, d).requires_grad_(True), rnd(T, d)
        shape = f"N={N} T={T} d={d}"
        mm = 2.0 * T * d * d
        ffl, fby = 3 * mm + 4.0 * N * T * d, 4.0 * ((N + 3) * T * d + 3 * T * d + 3 * d * d)
        bfl, bby = 6 * mm + 6.0 * N * T * d, 4.0 * ((2 * N + 4) * T * d + 3 * T * d + 6 * d * d)

        def ffwd():
            with torch.no_grad(), ctx():
                fu(h, z, r)

        def fboth():
            with ctx():
                o = fu(h, z, r)
            o.backward(do)

        t, c = timer.kernel(ffwd, args.warmup, args.reps)
        # FLOPs/bytes as the GPU rewrite counts them, so rates compare the same work; PyTorch does
        # (2N+1)/3 times more products.
        out.append(measurement("fusion_forward", shape, variant, t, c, ffl, fby, peaks))
        t, c = timer.kernel(fboth, args.warmup, args.reps)
        out.append(measurement("fusion_forward_backward", shape, variant, t, c, ffl + bfl, fby + bby, peaks))
        # Matmul.
        a_, b_ = rnd(n, n), rnd(n, n)
        if ac:
            a_, b_ = a_.to(ac), b_.to(ac)

        def mmul():
            torch.matmul(a_, b_)

        t, c = timer.kernel(mmul, args.warmup, args.reps)
        out.append(measurement("matmul", f"{n}x{n}x{n}", variant, t, c, 2.0 * n ** 3, 4.0 * 3 * n * n, peaks))
        for mm_ in out[-5:]:
            print(row(mm_), flush=True)


def bert_with_adapters(preset, dev, reduction=16):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **PRESETS[preset])
    model = BertForSequenceClassification(cfg).to(dev)
    for p in model.parameters():
        p.requires_grad_(False)
    d = cfg.hidden_size
    adapters = nn.ModuleList()
    for layer in model.bert.encoder.layer:
        for dense in (layer.attention.output.dense, layer.output.dense):
            a = Adapter(d, d // reduction, nn.SiLU()).to(dev)
            adapters.append(a)
            dense.register_forward_hook(lambda mod, inp, outp, a=a: a(outp))
    trainable = list(adapters.parameters()) + list(model.bert.pooler.parameters()) + list(model.classifier.parameters())
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    return cfg, model, opt, sum(p.numel() for p in trainable)


def step_flops(cfg, tokens, seq):
    d, f = cfg.hidden_size, cfg.intermediate_size
    return tokens * cfg.num_hidden_layers * (2 * (8 * d * d + 4 * d * f) + 3 * 4 * seq * d)


def batch(lengths, vocab, dev, g):
    s = max(lengths)
    ids = torch.randint(1000, vocab, (len(lengths), s), generator=g)
    ids[:, 0] = 101
    mask = torch.zeros(len(lengths), s, dtype=torch.long)
    for i, l in enumerate(lengths):
        mask[i, :l] = 1
    labels = torch.arange(len(lengths)) % 2
    return ids.to(dev), mask.to(dev), labels.to(dev)


def make_step(model, opt, ac, dev):
    def step(ids, mask, labels):
        with torch.autocast(dev.type, dtype=ac, enabled=ac is not None):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def steps(args, dev, timer, peaks, out):
    g = torch.Generator().manual_seed(5)
    for preset in args.configs:
        for variant, ac in [("torch-fp32", None), ("torch-bf16", torch.bfloat16)]:
            cfg, model, opt, trainable = bert_with_adapters(preset, dev)
            ids, mask, labels = batch([args.seq] * args.batch, cfg.vocab_size, dev, g)
            step = make_step(model, opt, ac, dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = timer.wall(lambda: step(ids, mask, labels), args.warmup, args.reps)
            peak = torch.cuda.max_memory_allocated() / 2 ** 20 if dev.type == "cuda" else None
            tokens = args.batch * args.seq
            m = measurement(f"train_step_{cfg.num_hidden_layers}x{cfg.hidden_size}", f"B={args.batch} S={args.seq}",
                            variant, t, "wall", step_flops(cfg, tokens, args.seq),
                            4.0 * 2 * sum(p.numel() for p in model.parameters()), peaks,
                            tokens_per_s=tokens / statistics.median(t), peak_gpu_mib=peak, trainable_parameters=trainable,
                            attn_implementation=getattr(model.config, "_attn_implementation", None))
            out.append(m)
            print(row(m), flush=True)
            del model, opt


def demo(args, dev, timer, peaks, out):
    lengths = [int(l) for l in open(args.lengths) if l.strip() and not l.startswith("#")]
    if args.demo_sentences:
        lengths = lengths[: args.demo_sentences]
    chunks = [lengths[i:i + args.demo_batch] for i in range(0, len(lengths), args.demo_batch)]
    g = torch.Generator().manual_seed(6)
    for variant, ac in [("torch-fp32", None), ("torch-bf16", torch.bfloat16)]:
        cfg, model, opt, _ = bert_with_adapters(args.demo_model, dev)
        batches = [batch(c, cfg.vocab_size, dev, g) for c in chunks]
        step = make_step(model, opt, ac, dev)
        for b in batches[:3]:
            step(*b)
        timer.sync()
        t0 = time.perf_counter()
        for b in batches:
            step(*b)
        timer.sync()
        epoch = time.perf_counter() - t0
        flops = sum(step_flops(cfg, len(c) * max(c), max(c)) for c in chunks)
        real = sum(lengths)
        m = measurement("demo_epoch", f"{len(lengths)} sentences, batch {args.demo_batch}", variant, [epoch], "wall",
                        flops, 0.0, peaks, steps=len(batches), mean_step_ms=epoch / len(batches) * 1e3,
                        real_tokens_per_s=real / epoch, real_tokens=real,
                        padded_tokens=sum(len(c) * max(c) for c in chunks))
        out.append(m)
        print(row(m), flush=True)
        del model, opt


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--only", default="", help="comma-separated: kernels, step, demo (default: all)")
    p.add_argument("--config", dest="configs", action="append", help="minilm, bert-base, bert-large")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--matmul", type=int, default=4096)
    p.add_argument("--lengths", default="bench/rt-lengths.txt")
    p.add_argument("--demo-model", default="minilm")
    p.add_argument("--demo-batch", type=int, default=32)
    p.add_argument("--demo-sentences", type=int)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--small", action="store_true", help="tiny shapes (a check of the script on a CPU)")
    p.add_argument("--json")
    args = p.parse_args()
    args.configs = args.configs or ["minilm", "bert-base"]
    if args.small:
        args.tokens, args.hidden, args.bottleneck, args.adapters, args.matmul = 64, 64, 8, 3, 64
        args.batch, args.seq, args.demo_sentences, args.reps, args.warmup = 2, 16, 40, 3, 1
        args.configs = ["minilm"]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peaks = next((v for k, v in PEAKS.items() if k in name.lower()), None)
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    timer = Timer(dev)
    only = [s for s in args.only.split(",") if s]
    out = []
    if not only or "kernels" in only:
        kernels(args, dev, timer, peaks, out)
    if not only or "step" in only:
        steps(args, dev, timer, peaks, out)
    if not only or "demo" in only:
        demo(args, dev, timer, peaks, out)
    if args.json:
        with open(args.json, "w") as f:
            for m in out:
                m["device"] = name
                m["torch"] = torch.__version__
                f.write(json.dumps(m) + "\n")
        print(f"wrote {len(out)} results to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
