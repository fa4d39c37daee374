"""Session 5, device calls 3-4: bisect fuzz case #181 of call 2 (bf16, B11 H1 Lq53 Lk315 D27,
shared factors R38, bias [B, H, 1, Lk], key mask, gate, grad: dq / dk / dv 0.83-0.88 off, the
ds_sum kernel's dbias / dfactors right; alone in a process it hit an illegal memory access).
``python bisect181.py NAME`` runs one variant (each changes one thing) and prints its errors;
run each in its own process, since an illegal access poisons the CUDA context."""
import dataclasses
import sys

from pairformer_fb.bench import fuzz

base = fuzz.FuzzCase(181, 1604832000, "bf16", 11, 1, 53, 315, 27, 38, 1, "B H 1 Lk", True, (), True, True)
VARIANTS = {
    "as_drawn": {}, "fp16": dict(dtype="fp16"), "no_gate": dict(gate=False), "no_mask": dict(mask=False),
    "bias_1H1Lk": dict(bias="1 H 1 Lk"), "bias_BHLqLk": dict(bias="B H Lq Lk"), "no_bias": dict(bias=None),
    "no_factors": dict(R=0), "R32": dict(R=32), "R16": dict(R=16), "D32": dict(D=32), "D40": dict(D=40),
    "Lq64": dict(Lq=64), "Lk320": dict(Lk=320), "B1": dict(B=1), "B2": dict(B=2), "H2": dict(H=2),
    "seed1": dict(seed=base.seed + 1), "no_grad": dict(grad=False),
}
if __name__ == "__main__":
    name = sys.argv[1]
    r = fuzz.run_case(dataclasses.replace(base, **VARIANTS[name]), "cuda")
    import torch

    torch.cuda.synchronize()
    print(f"{name:>12}: {r['status']:<16} " + " ".join(f"{k}={v:.1e}" for k, v in r["errors"].items()), flush=True)
