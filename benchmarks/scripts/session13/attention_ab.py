"""One variant of an A/B of the op (issue 17): the triangle shape's forward and forward + backward
at --sizes for --methods (``pairformer_fb.bench.attention``'s inputs and closures, bf16),
medians of ``triton.testing.do_bench`` with --rep-ms of repetitions. A variant is an environment
(e.g. PFB_GRID_ORDER_BWD=3, read at import), so each runs in its own process; alternate the
variants' processes to see the drift. Appends one JSON line per measurement to --out.

    PFB_GRID_ORDER_BWD=3 python benchmarks/scripts/session13/attention_ab.py --label bwd3 --out ab.jsonl
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.append(str(ROOT))  # appended: a package on PYTHONPATH (an A/B copy) wins

import torch  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402

import pairformer_fb  # noqa: E402
from pairformer_fb.bench.attention import Case, _inputs, _method  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", default="2048,1536,1024,1170")
    p.add_argument("--methods", default="fb_bias,fb_factors")
    p.add_argument("--rep-ms", type=float, default=400)
    p.add_argument("--no-fwd", action="store_true", help="forward + backward only")
    args = p.parse_args()
    if not all(x.isdigit() and int(x) > 0 for x in args.sizes.split(",")):
        p.error(f"--sizes: expected comma-separated positive integers, got {args.sizes!r}")
    methods = ("sdpa_floor", "fb_bias", "fb_factors")
    if any(m not in methods for m in args.methods.split(",")):
        p.error(f"--methods: expected some of {list(methods)}, got {args.methods!r}")
    env = {k: v for k, v in os.environ.items() if k.startswith("PFB_")}
    print("pairformer_fb from", pairformer_fb.__file__, env, flush=True)
    for n in map(int, args.sizes.split(",")):
        for method in args.methods.split(","):
            rec = {"label": args.label, "env": env, "n": n, "method": method, "device": torch.cuda.get_device_name()}
            rec.update(_measure(Case("triangle", n, n, 4, 32), method, args))
            print(json.dumps(rec), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
            torch.cuda.empty_cache()


def _measure(case: Case, method: str, args) -> dict:
    q, k, v, bias, qf, kf = _inputs(case, torch.bfloat16, torch.device("cuda"), 32, 0)
    fn, grad_inputs = _method(method, q, k, v, bias, qf, kf)
    rec = {}
    t0 = time.perf_counter()
    if not args.no_fwd:
        with torch.no_grad():
            rec["fwd_ms"] = triton.testing.do_bench(fn, warmup=50, rep=args.rep_ms, return_mode="median")
    for t in grad_inputs:
        t.requires_grad_(True)
    do = torch.randn_like(q)
    rec["fwd_bwd_ms"] = triton.testing.do_bench(
        lambda: torch.autograd.grad(fn(), grad_inputs, do), warmup=50, rep=args.rep_ms, return_mode="median"
    )
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    return rec


if __name__ == "__main__":
    main()
