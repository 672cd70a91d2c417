#!/usr/bin/env python3
"""Side-by-side table of `peft bench --json` and `bench/pytorch_baseline.py --json` results from
one run on one card, as Markdown: for each workload, our time (per variant), PyTorch fp32 and bf16
times, speed-up = PyTorch fp32 time / ours, the roofline floor, and the issue's target.

  python3 bench/compare.py ours.jsonl torch.jsonl --card "NVIDIA H100 80GB HBM3" > table.md
"""
import argparse
import json

# The targets (µs unless noted), by workload name.
TARGETS = {
    "adapter_forward": "≤ 17 µs",
    "adapter_forward_backward": "≤ 60 µs",
    "fusion_forward": "≤ 400 µs",
    "fusion_forward_backward": "≤ 1200 µs",
    "matmul": "≥ 35 TFLOP/s",
    "train_step_12x768": "≤ 40 ms f32; ≤ 25 ms f16/coop",
    "train_step_6x384": "≤ 12 ms",
    "demo_epoch": "≤ 0.5 s",
}


def load(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def fmt_time(us):
    if us is None or us != us:
        return "-"
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e4:
        return f"{us / 1e3:.1f} ms"
    return f"{us:.1f} µs"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("ours")
    p.add_argument("torch")
    p.add_argument("--card", default="")
    args = p.parse_args()
    ours, torch = load(args.ours), load(args.torch)
    ref = {(m["name"], m["shape"], m["variant"]): m for m in torch}
    print("| workload | shape | ours (variant) | ours | GFLOP/s | GB/s | rel. err | PyTorch fp32 | PyTorch bf16 | fp32 ÷ ours | floor | % of floor | target |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in ours:
        key = (m["name"], m["shape"])
        t32 = ref.get(key + ("torch-fp32",))
        t16 = ref.get(key + ("torch-bf16",))
        ratio = f"{t32['median_us'] / m['median_us']:.2f}×" if t32 and m["median_us"] == m["median_us"] else "-"
        err = m.get("max_rel_err")
        pct = m.get("pct_of_floor")
        print(
            f"| {m['name']} | {m['shape']} | {m['variant']} | {fmt_time(m['median_us'])} | {m['gflops']:.0f} | {m['gbps']:.0f} | "
            f"{'-' if err is None else f'{err:.1e}'} | {fmt_time(t32['median_us']) if t32 else '-'} | "
            f"{fmt_time(t16['median_us']) if t16 else '-'} | {ratio} | {fmt_time(m.get('floor_us'))} | "
            f"{'-' if pct is None else f'{pct:.0f}%'} | {TARGETS.get(m['name'], '')} |"
        )
    extras = [m for m in ours + torch if m.get("extra")]
    if extras:
        print("\nExtra fields (ours first, then PyTorch):\n")
        for m in extras:
            e = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m["extra"].items())
            print(f"- {m['name']} {m['shape']} {m['variant']}: {e}")


if __name__ == "__main__":
    main()
