"""How much of the op's host time a direct launch of Triton's cached compiled kernels would save
(issue 17's host-bound small shapes), measured on a machine without a GPU: Triton's driver is
replaced by one that compiles for sm_90 and whose launcher records its arguments and launches
nothing (session10/triton_launch_cost.py's). A prototype launcher (``Direct``, not product code)
keys each compiled kernel by a Python mirror of Triton's argument specialisation (tensor dtype and
16-byte alignment; an int's == 1, % 16 and width; constexprs and options), and launches a hit
through ``CompiledKernel.run`` with the arguments in signature order, skipping JITFunction.run's
binder, cache key and checks. It checks that the launcher receives the same arguments either way,
then times the op's forward + backward (autograd, the public op) both ways.

    python benchmarks/scripts/session13/direct_launch_cpu.py --out X.json
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks" / "scripts" / "session10")]

import torch  # noqa: E402
import triton  # noqa: E402
import triton_launch_cost as tlc  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

from pairformer_fb.cli import atomic_write  # noqa: E402

LAUNCHES: list[tuple] = []
RECORDING = [False]


def _normal(a):
    """A launcher argument in a form two calls can be compared by: a tensor by its layout (its
    storage is new each call), a descriptor by its fields, the rest as it is."""
    if isinstance(a, torch.Tensor):
        return ("tensor", a.dtype, tuple(a.shape), a.stride(), a.data_ptr() % 16)
    if isinstance(a, TensorDescriptor):
        return ("desc", _normal(a.base), list(a.shape), list(a.strides), list(a.block_shape), a.padding)
    return a


class _RecordingDriver(tlc._NoLaunchDriver):
    class launcher_cls:  # noqa: N801  (Triton's attribute name)
        def __init__(self, src, metadata):
            pass

        def __call__(self, *args, **kwargs):
            if RECORDING[0]:
                LAUNCHES.append(tuple(map(_normal, args)))


def _spec(a):
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    if isinstance(a, bool):
        return ("u1",)
    if isinstance(a, int):
        return (a == 1, a % 16 == 0, -(2**31) <= a < 2**31)
    if isinstance(a, float):
        return ("fp32",)
    if isinstance(a, TensorDescriptor):
        return ("td", a.base.dtype, tuple(a.block_shape), a.base.data_ptr() % 16 == 0)
    return (a,)


class Direct:
    """A JITFunction's launches, a compiled kernel reused for a repeated specialisation."""

    def __init__(self, fn):
        self.fn, self.cache, self.names = fn, {}, fn.arg_names

    def __getitem__(self, grid):
        def run(*args, **kw):
            key = (tuple(sorted(kw.items())), tuple(map(_spec, args)))
            kernel = self.cache.get(key)
            if kernel is None:
                self.cache[key] = self.fn[grid](*args, **kw)
                return
            full = (*args, *(kw[n] for n in self.names[len(args) :]))
            stream = driver.active.get_current_stream(driver.active.get_current_device())
            kernel.run(grid[0], 1, 1, stream, kernel.function, kernel.packed_metadata, None, None, None, *full)

        return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"direct_launch_cpu: error: --out {out} exists")
    driver.set_active(_RecordingDriver())
    from pairformer_fb.kernel import tiles
    from pairformer_fb.kernel import triton_launch as tl_
    from pairformer_fb.kernel.op import flash_bias_attention

    os.environ["TRITON_INTERPRET"] = "1"  # only lets the op's backend="triton" take CPU tensors
    names = ("_fwd_kernel", "_bwd_kernel", "_bwd_delta_kernel", "_ds_sum_kernel")
    jit = {n: getattr(tl_, n) for n in names}
    records = []
    shapes = {
        "triangle (B 8, H 4, L 256, D 32, bias [1, H, L, L])": (8, 4, 256, 32),
        "single (B 1, H 16, L 384, D 24, bias [1, H, L, L])": (1, 16, 384, 24),
    }
    for name, (B, H, L, D) in shapes.items():
        g = torch.Generator().manual_seed(0)
        q, k, v, do = (torch.randn(B, H, L, D, generator=g).to(torch.bfloat16) for _ in range(4))
        bias = torch.randn(1, H, L, L, generator=g).to(torch.bfloat16)
        ins = [q, k, v, bias]
        for t in ins:
            t.requires_grad_(True)

        def fwd_bwd():
            return torch.autograd.grad(flash_bias_attention(q, k, v, bias=bias, backend="triton"), ins, do)

        row = {"shape": name}
        # the same launcher arguments both ways (the descriptors compared by their fields)
        sent = {}
        for mode in ("triton", "direct"):
            for n in names:
                setattr(tl_, n, jit[n] if mode == "triton" else Direct(jit[n]))
            fwd_bwd()  # direct: the first call fills its cache through Triton
            LAUNCHES.clear()
            RECORDING[0] = True
            fwd_bwd()
            RECORDING[0] = False
            sent[mode] = list(LAUNCHES)
            row[f"{mode}_us"] = tlc._us(fwd_bwd, args.calls, args.repeats)
        row["launches"] = len(sent["triton"])
        row["same_launcher_arguments"] = sent["triton"] == sent["direct"]
        if not row["same_launcher_arguments"]:
            row["differences"] = [
                (i, j, repr(a), repr(b))
                for i, (ct, cd) in enumerate(zip(sent["triton"], sent["direct"]))
                for j, (a, b) in enumerate(zip(ct, cd))
                if repr(a) != repr(b)
            ][:10]
        for n in names:
            setattr(tl_, n, jit[n])
        records.append(row)
        print(json.dumps(row), flush=True)
    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cpu": f"{platform.machine()}, {os.cpu_count()} cores",
        "tma_reduce": sorted(tiles.TMA_REDUCE),
        "what": "the public op's forward + backward (autograd) on CPU tensors, Triton compiling for sm_90 with a "
        "recording no-op launcher: Triton's JITFunction.run against a direct CompiledKernel.run",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps({"environment": env, "records": records}, indent=1))


if __name__ == "__main__":
    main()
