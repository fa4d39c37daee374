"""Compile the op's Triton kernels for an sm_90 (Hopper) target on a machine without a GPU, as a
first call would, and print one JSON line per kernel compiled: shared memory, registers, stack
(spills), compile seconds. Run as a script (it replaces Triton's driver for the process):

    python tests/aot_compile.py '{"B": 4, "H": 2, "Lq": 100, "Lk": 100, "D": 128, "dtype": "bf16"}'

Keys: B, H, Lq, Lk, D, R (0), factor_batch (1), bias_shape (null), mask (false), dtype
(bf16 | fp16 | fp32 | tf32), grad (true), fwd_tiles / bwd_tiles (null: the tile table's; else
[block_m, block_n, num_warps, num_stages, rows]; the backward's with its dS sum fused), tma_reduce
(the kinds of bulk reduce-adds compiled in; default: tiles.TMA_REDUCE's, as on a device of compute
capability 9; [] for the per-thread atomics of older devices), sass (false:
true adds the sha256 of the kernel's SASS
without its source-line comments, which tells whether two versions of the code compile to the
same machine code). A launch whose kernel needs more shared memory than an
H100 / H200 block may have raises OutOfResources as the device would, so the op's shrink-and-
retry path runs here too (each retry is one more line)."""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from triton.runtime.errors import OutOfResources
from triton.runtime.jit import JITFunction

HOPPER_SHARED_MEMORY = 232448  # bytes a block may have on sm_90 (227 KiB)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


class _Sm90Driver:
    """Just enough of a driver for Triton to compile for sm_90 without a device."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


def _cuobjdump(kernel, flag: str) -> str:
    """cuobjdump's ``flag`` output for the kernel's cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    try:
        return subprocess.run([CUOBJDUMP, flag, f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)


def _resources(kernel) -> dict:
    m = re.search(r"REG:(\d+) STACK:(\d+)", _cuobjdump(kernel, "--dump-resource-usage"))
    return {"registers": int(m.group(1)), "stack_bytes": int(m.group(2))} if m else {}


def _sass_sha256(kernel) -> str:
    """sha256 of the cubin's SASS, source-line comments ("//##" file / line info) and blank lines
    dropped, so that code moved between files or lines hashes the same."""
    import hashlib

    out = _cuobjdump(kernel, "-sass")
    lines = [ln.split("//")[0].strip() for ln in out.splitlines() if not ln.lstrip().startswith("//##")]
    return hashlib.sha256("\n".join(ln for ln in lines if ln).encode()).hexdigest()


SASS = False  # set by main from the spec


def _compile_instead_of_launch(self, *args, grid, warmup, **kwargs):
    t0 = time.perf_counter()
    kernel = _run(self, *args, grid=grid, warmup=True, **kwargs)
    shared = kernel.metadata.shared
    print(
        json.dumps(
            {
                "kernel": self.__name__,
                "seconds": round(time.perf_counter() - t0, 2),
                "shared_bytes": shared,
                **_resources(kernel),
                **{k: kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "ROWS") if k in kwargs},
                "num_warps": kernel.metadata.num_warps,
                "num_stages": kernel.metadata.num_stages,
                "bulk_reduces": kernel.asm["ptx"].count("cp.reduce.async.bulk.tensor"),  # tma_reduce's
                **({"sass_sha256": _sass_sha256(kernel)} if SASS else {}),
            }
        ),
        flush=True,
    )
    if shared > HOPPER_SHARED_MEMORY:
        raise OutOfResources(shared, HOPPER_SHARED_MEMORY, "shared memory")
    return kernel


_run = JITFunction.run


def main(spec: dict) -> None:
    global SASS
    SASS = bool(spec.get("sass", False))
    driver.set_active(_Sm90Driver())
    JITFunction.run = _compile_instead_of_launch
    import importlib
    import importlib.util

    if importlib.util.find_spec("pairformer_fb.kernel.triton_launch") is not None:
        from pairformer_fb.kernel import triton_launch as tfb
    else:  # the code before the kernel module was split (an old checkout, for comparisons)
        tfb = importlib.import_module("pairformer_fb.kernel.triton_flash_bias")

    if hasattr(tfb, "_tma_reduce_kinds"):  # as it answers on an sm_90 device (absent in old checkouts)
        from pairformer_fb.kernel import tiles as _tiles

        kinds = frozenset(spec.get("tma_reduce", _tiles.TMA_REDUCE))
        tfb._tma_reduce_kinds = lambda *device_and_size: kinds  # at every size
    dtype = spec.get("dtype", "bf16")
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}[dtype]
    B, H, Lq, Lk, D = (spec[k] for k in ("B", "H", "Lq", "Lk", "D"))
    R = spec.get("R", 0)
    fb = spec.get("factor_batch", 1)
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g).to(dt)  # noqa: E731
    q, k, v = rnd(B, H, Lq, D), rnd(B, H, Lk, D), rnd(B, H, Lk, D)
    qf, kf = (rnd(fb, H, Lq, R), rnd(fb, H, Lk, R)) if R else (None, None)
    bias = rnd(*spec["bias_shape"]) if spec.get("bias_shape") else None
    mask = torch.rand(B, Lk, generator=g) > 0.3 if spec.get("mask") else None
    for kind in ("fwd", "bwd"):
        if spec.get(f"{kind}_tiles"):
            from pairformer_fb.kernel import tiles

            block_r = tiles._pow2_at_least_16(R) if R else 0
            key = tiles.config_key(kind, tiles._pow2_at_least_16(D), block_r, bias is not None, q.element_size())
            tiles.CONFIG_OVERRIDES[key] = tiles.KernelConfig(*spec[f"{kind}_tiles"], fuse_ds=kind == "bwd")
    ops = tfb._Operands(q, k, v, qf, kf, bias, mask, D**-0.5)
    o, stats = tfb._forward(q, k, v, ops)
    if spec.get("grad", True):
        tfb._backward(q, k, v, o, stats, rnd(B, H, Lq, D), ops, (True,) * 3 + (R > 0,) * 2 + (bias is not None,))


if __name__ == "__main__":
    # compiled, not interpreted: the flag is read when the kernels are defined (imported in main)
    os.environ.pop("TRITON_INTERPRET", None)
    main(json.loads(sys.argv[1]))
