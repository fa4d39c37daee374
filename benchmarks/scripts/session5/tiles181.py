"""Session 5, device call 5: which backward tiles avoid the invalid shared-memory read of fuzz case
#181 (compute-sanitizer, call 4: _bwd_kernel reads 1024 bytes out of bounds at the dQ product
when the padded rank exceeds the padded head dim, 64 > 32, with factors shared by the rows).
``python tiles181.py CASE BM,BN,WARPS,STAGES,ROWS`` runs one case with those tiles for every
16-bit backward of padded head dim 16 / 32 with factors; one process per run."""
import dataclasses
import sys

import torch

import pairformer_fb.kernel.tiles as tfb
from pairformer_fb.bench import fuzz

base = fuzz.FuzzCase(181, 1604832000, "bf16", 11, 1, 53, 315, 27, 38, 1, "B H 1 Lk", True, (), True, True)
CASES = {
    "c181": {}, "d16r64": dict(D=16, R=64, B=4, Lq=100, Lk=300, bias=None),
    "d16r32": dict(D=16, R=32, B=4, Lq=100, Lk=300, bias=None), "d8r20": dict(D=8, R=20, B=6, Lq=77, Lk=200),
    "d32r32": dict(D=32, R=32, B=4, Lq=100, Lk=300), "d32r64bias": dict(R=64, bias="1 H Lq Lk"),
}
if __name__ == "__main__":
    name, cfg = sys.argv[1], sys.argv[2]
    if cfg != "default":
        bm, bn, w, s, rows = map(int, cfg.split(","))
        for bd in (16, 32):
            for br in (32, 64):
                for hb in (False, True):
                    tfb.CONFIG_OVERRIDES[tfb.config_key("bwd", bd, br, hb, 2)] = tfb.KernelConfig(
                        bm, bn, w, s, rows, fuse_ds=True)
    r = fuzz.run_case(dataclasses.replace(base, **CASES[name]), "cuda")
    torch.cuda.synchronize()
    print(f"{name:>10} {cfg:>14}: {r['status']:<16} " + " ".join(f"{k}={v:.1e}" for k, v in r["errors"].items()),
          flush=True)
