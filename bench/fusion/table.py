#!/usr/bin/env python3
"""The table of bench/fusion/low-resource.sh's results.tsv: test accuracy and macro-F1 per variant,
mean ± std over the seeds run, and one row per seed.

usage: bench/fusion/table.py runs/fusion-low-resource/results.tsv
"""
import csv
import statistics
import sys

NAMES = {
    "head-only": "head only (frozen base)",
    "adapter": "own Pfeiffer adapter",
    "fusion": "AdapterFusion (sentiment + topic)",
}


def mean_std(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    print("| variant | test accuracy (mean ± std) | test macro-F1 (mean ± std) | seeds | train s (mean) |")
    print("|---|---|---|---|---|")
    for key, name in NAMES.items():
        rs = [r for r in rows if r["variant"] == key]
        if not rs:
            continue
        a = mean_std([float(r["test_accuracy"]) for r in rs])
        f1 = mean_std([float(r["test_macro_f1"]) for r in rs])
        t = statistics.mean(float(r["train_seconds"]) for r in rs)
        print(f"| {name} | {a[0]:.4f} ± {a[1]:.4f} | {f1[0]:.4f} ± {f1[1]:.4f} | {len(rs)} | {t:.0f} |")
    print()
    print("| seed | variant | test accuracy | test macro-F1 | test n | best dev accuracy | train s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['variant']} | {float(r['test_accuracy']):.4f} | {float(r['test_macro_f1']):.4f} "
              f"| {r['test_n']} | {r['best_dev']} | {r['train_seconds']} |")


if __name__ == "__main__":
    main(sys.argv[1])
