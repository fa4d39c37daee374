"""Host time of the op's forward and backward with Triton's real JIT launch path (issue 17),
on a machine without a GPU: Triton's driver is replaced by one that compiles for sm_90
(tests/aot_compile.py's) and whose launcher does nothing, so each launch runs Triton's own Python
(argument binding and specialization, the kernel cache lookup, launch metadata) but no kernel.
The same calls with the kernel objects stubbed out (no Triton at all) give the op's own Python;
the difference is Triton's launch cost. session9/host_overhead.py measured only the latter.

    python benchmarks/scripts/session10/triton_launch_cost.py --out X.json
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels (for sm_90), not the interpreter
ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import aot_compile  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402


class _NoLaunchDriver(aot_compile._Sm90Driver):
    """Compiles for sm_90; loading a binary and launching it do nothing."""

    class launcher_cls:  # noqa: N801  (Triton's attribute name)
        def __init__(self, src, metadata):
            pass

        def __call__(self, *args, **kwargs):
            return None

    class utils:  # noqa: N801
        @staticmethod
        def get_device_properties(device):
            return {"max_shared_mem": aot_compile.HOPPER_SHARED_MEMORY, "multiprocessor_count": 132}

        @staticmethod
        def load_binary(name, kernel, shared, device):
            return 0, 0, 0, 0, 1024  # module, function, registers, spills, max threads


class _NoKernel:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _us(fn, calls: int, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"triton_launch_cost: error: --out {out} exists")
    driver.set_active(_NoLaunchDriver())
    from pairformer_fb.kernel import triton_launch as tl_

    shapes = {
        # name: (B, H, L, D, bias shape) - the triangle shape with its row-shared bias, the single attention
        "triangle (B 8, H 4, L 256, D 32, bias [1, H, L, L])": (8, 4, 256, 32, "shared"),
        "single (B 1, H 16, L 384, D 24, bias [1, H, L, L])": (1, 16, 384, 24, "shared"),
    }
    records = []
    for name, (B, H, L, D, _) in shapes.items():
        g = torch.Generator().manual_seed(0)
        q, k, v, do = (torch.randn(B, H, L, D, generator=g).to(torch.bfloat16) for _ in range(4))
        bias = torch.randn(1, H, L, L, generator=g).to(torch.bfloat16)
        needs = (True, True, True, False, False, True)
        state = {}

        def fwd():
            ops = tl_._Operands(q, k, v, None, None, bias, None, D**-0.5)
            state["o"], state["stats"] = tl_._forward(q, k, v, ops)
            state["ops"] = ops

        def bwd():
            tl_._backward(q, k, v, state["o"], state["stats"], do, state["ops"], needs)

        fwd()
        row = {"shape": name, "triton": {}, "stubbed": {}}
        row["triton"] = {"fwd_us": _us(fwd, args.calls, args.repeats), "bwd_us": _us(bwd, args.calls, args.repeats)}
        kernels = {n: getattr(tl_, n) for n in ("_fwd_kernel", "_bwd_kernel", "_bwd_delta_kernel", "_ds_sum_kernel")}
        launches = {"fwd": 0, "bwd": 0}
        for n in kernels:
            setattr(tl_, n, _NoKernel())
        try:
            row["stubbed"] = {
                "fwd_us": _us(fwd, args.calls, args.repeats),
                "bwd_us": _us(bwd, args.calls, args.repeats),
            }
        finally:
            for n, kern in kernels.items():
                setattr(tl_, n, kern)
        launches["fwd"], launches["bwd"] = 1, 2  # _fwd_kernel; _bwd_delta_kernel + _bwd_kernel (fused dS / stored)
        row["launches"] = launches
        row["triton_us_per_launch"] = {
            k: (row["triton"][f"{k}_us"] - row["stubbed"][f"{k}_us"]) / launches[k] for k in ("fwd", "bwd")
        }
        records.append(row)
        print(json.dumps(row), flush=True)
    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cpu": f"{platform.machine()}, {os.cpu_count()} cores",
        "what": "the op's _forward / _backward on CPU tensors, Triton compiling for sm_90 with a no-op launcher",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"environment": env, "records": records}, indent=1))
    tmp.replace(out)


if __name__ == "__main__":
    main()
