"""Host time of the op per forward + backward on the device (issue 17, the host-bound small N).

For each shape and method: the record's measure (``triton.testing.do_bench`` median of
``torch.autograd.grad(fn(), inputs, do)``, as ``pairformer_fb.bench.attention``), then the
host's own time per call, measured while the GPU is kept busy by ``torch.cuda._sleep`` so that
the host never waits for it (the enqueue time of 30 calls / 30), and a cProfile of those calls
(top functions by own time) into ``--out``/cprofile_<case>.txt.

    python benchmarks/scripts/session13/host_profile.py --out DIR
"""

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
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

SHAPES = {
    "triangle256": Case("triangle", 256, 256, 4, 32),
    "triangle384": Case("triangle", 384, 384, 4, 32),
    "single384": Case("single", 384, 1, 16, 24),
    "diffusion384": Case("diffusion", 384, 5, 16, 48),
}


def _host_us(fn, calls: int) -> float:
    """Host time per call with the GPU busy throughout (the host never waits on it)."""
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e8))  # ~100 ms of GPU time at ~2 GHz: longer than the calls' enqueue
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t = (time.perf_counter() - t0) / calls * 1e6
    torch.cuda.synchronize()
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--methods", default="sdpa_floor,fb_bias,fb_factors")
    p.add_argument("--calls", type=int, default=30)
    args = p.parse_args()
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        p.error(f"--shapes: unknown {unknown}; expected some of {list(SHAPES)}")
    methods = ("sdpa_floor", "fb_bias", "fb_factors")
    if any(m not in methods for m in args.methods.split(",")):
        p.error(f"--methods: expected some of {list(methods)}, got {args.methods!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("pairformer_fb from", pairformer_fb.__file__, flush=True)
    dev = torch.device("cuda")
    records = []
    for sname in args.shapes.split(","):
        case = SHAPES[sname]
        for method in args.methods.split(","):
            q, k, v, bias, qf, kf = _inputs(case, torch.bfloat16, dev, 32, 0)
            fn, grad_inputs = _method(method, q, k, v, bias, qf, kf)
            for t in grad_inputs:
                t.requires_grad_(True)
            do = torch.randn_like(q)

            def fwd_bwd():
                return torch.autograd.grad(fn(), grad_inputs, do)

            def fwd():
                with torch.no_grad():
                    return fn()

            for _ in range(3):
                fwd_bwd()
            rec = {"shape": sname, "method": method, "env": os.environ.get("PFB_TMA_REDUCE", "default")}
            rec["do_bench_fwd_ms"] = triton.testing.do_bench(fwd, return_mode="median")
            rec["do_bench_fwd_bwd_ms"] = triton.testing.do_bench(fwd_bwd, return_mode="median")
            rec["host_fwd_us"] = min(_host_us(fwd, args.calls) for _ in range(3))
            rec["host_fwd_bwd_us"] = min(_host_us(fwd_bwd, args.calls) for _ in range(3))
            prof = cProfile.Profile()
            torch.cuda.synchronize()
            torch.cuda._sleep(int(2e8))
            prof.enable()
            for _ in range(args.calls):
                fwd_bwd()
            prof.disable()
            torch.cuda.synchronize()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(40)
            tag = f"{sname}_{method}_{rec['env'].replace(',', '+')}"
            (out / f"cprofile_{tag}.txt").write_text(s.getvalue())
            print(json.dumps(rec), flush=True)
            records.append(rec)
    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "package": pairformer_fb.__file__,
    }
    name = out / f"host_profile_{os.environ.get('PFB_TMA_REDUCE', 'default').replace(',', '+')}.json"
    name.write_text(json.dumps({"environment": env, "records": records}, indent=1))


if __name__ == "__main__":
    main()
