"""Session 5, device call 3: bisect fuzz case #181 of call 2 (bf16, B11 H1 Lq53 Lk315 D27, shared
factors R38, bias [B, H, 1, Lk], key mask, gate, grad: dq / dk / dv 0.83-0.88 off, the ds_sum
kernel's dbias / dfactors right). Each variant changes one thing; prints the gradient errors."""
import dataclasses

from pairformer_fb.tools import fuzz

base = fuzz.FuzzCase(181, 1604832000, "bf16", 11, 1, 53, 315, 27, 38, 1, "B H 1 Lk", True, (), True, True)
variants = {
    "as drawn": {}, "again": {}, "fp16": dict(dtype="fp16"), "no gate": dict(gate=False), "no mask": dict(mask=False),
    "bias 1 H 1 Lk": dict(bias="1 H 1 Lk"), "bias B H Lq Lk": dict(bias="B H Lq Lk"), "no bias": dict(bias=None),
    "no factors": dict(R=0), "R 32": dict(R=32), "D 32": dict(D=32), "Lq 64": dict(Lq=64), "Lk 320": dict(Lk=320),
    "B 1": dict(B=1), "B 2": dict(B=2), "H 2": dict(H=2), "seed+1": dict(seed=base.seed + 1),
}
for name, change in variants.items():
    r = fuzz.run_case(dataclasses.replace(base, **change), "cuda")
    errs = " ".join(f"{k}={v:.1e}" for k, v in r["errors"].items())
    print(f"{name:>16}: {r['status']:<20} {errs}", flush=True)
