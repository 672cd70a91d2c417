#!/usr/bin/env python3
"""Correctness on the machine at hand: `peft grads` on the AdapterHub fixtures (written by the real
PyTorch `adapters` library) against their expected logits, loss, last hidden state and gradients.
Prints the worst relative error (‖ours − expected‖∞ / ‖expected‖∞) per case; exits non-zero
when one exceeds 1e-4.

  python3 bench/parity.py PEFT_BINARY FIXTURES_DIR (the folder holding tiny-bert/)
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

TOL = 1e-4


def case_args(root, case):
    d = root / "tiny-bert" / case
    args = ["--model", str(root / "tiny-bert" / "base"), "--inputs", str(d / "inputs.json")]
    if case == "fusion":
        for a in sorted((d / "adapters").iterdir()):
            args += ["--adapter", str(a)]
        args += ["--fusion", str(d / "fusion"), "--head", str(d / "head")]
    else:
        args += ["--adapter", str(d / "adapter")]
    return args


def main():
    peft, root = sys.argv[1], Path(sys.argv[2])
    worst_all = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for case in ["houlsby", "pfeiffer", "fusion"]:
            for resident in [None, "1"]:
                out = Path(tmp) / f"{case}.safetensors"
                cmd = [peft, "grads", *case_args(root, case), "--out", str(out)]
                if resident:
                    cmd += ["--resident-layers", resident]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                ours, exp = load_file(str(out)), load_file(str(root / "tiny-bert" / case / "expected.safetensors"))
                worst, name = 0.0, ""
                for k, e in exp.items():
                    if k not in ours:
                        print(f"{case}: {k} missing from our output")
                        return 1
                    e64, o64 = e.astype(np.float64), ours[k].astype(np.float64).reshape(e.shape)
                    if k.startswith("grad.") and k.endswith("key.bias"):
                        # Zero by the algebra (softmax is shift-invariant; the fixture's is float
                        # noise, ~1e-9): ours must be exactly 0.
                        err = 0.0 if np.all(o64 == 0) else float("inf")
                        if err > worst:
                            worst, name = err, k
                        continue
                    den = np.abs(e64).max()
                    err = np.abs(o64 - e64).max() / den if den > 0 else np.abs(o64).max()
                    if not np.isfinite(err):
                        err = float("inf")
                    if err > worst:
                        worst, name = err, k
                label = case + (f" (--resident-layers {resident})" if resident else "")
                print(f"parity {label}: {len(exp)} tensors, worst relative error {worst:.2e} ({name})")
                worst_all = max(worst_all, worst)
    print(f"parity: worst {worst_all:.2e} (tolerance {TOL:.0e}): {'ok' if worst_all <= TOL else 'FAILED'}")
    return 0 if worst_all <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
