"""Compile the op's Triton kernels for sm_90 on a machine without a GPU (no launch)."""
import time, sys, os
import torch, triton
from triton.runtime.driver import driver
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction
from triton.runtime.errors import OutOfResources

class FakeDriver:
    def get_current_target(self): return GPUTarget("cuda", 90, 32)
    def get_current_device(self): return 0
    def get_current_stream(self, d=None): return 0
    def get_active_torch_device(self): return torch.device("cpu")
driver.set_active(FakeDriver())
SMEM = 232448
LOG = []
_orig = JITFunction.run
def run(self, *args, grid, warmup, **kw):
    t = time.perf_counter()
    n0 = sum(len(c[0]) for c in self.device_caches.values())
    k = _orig(self, *args, grid=grid, warmup=True, **kw)
    n1 = sum(len(c[0]) for c in self.device_caches.values())
    dt = time.perf_counter() - t
    md = k.metadata
    LOG.append(dict(fn=self._fn_name, compiled=n1 > n0, s=round(dt, 2), **resources(k),
                    smem=md.shared, warps=md.num_warps, stages=md.num_stages,
                    cfg={x: kw[x] for x in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_R", "ROWS") if x in kw}))
    if md.shared > SMEM:
        raise OutOfResources(md.shared, SMEM, "shared memory")
    return k
JITFunction.run = run
# make tensors look like cuda for the op's dispatch
import pairformer_fb.kernel.triton_flash_bias as tfb
import subprocess, tempfile, re
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")

def resources(k):
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"]); p = f.name
    out = subprocess.run([CUOBJDUMP, "--dump-resource-usage", p], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return dict(zip(("reg", "stack", "shared_static", "local"), map(int, m.groups()))) if m else out

def case(B, H, Lq, Lk, D, R=0, fb=1, bias_shape=None, mask=False, gate=False, dtype=torch.bfloat16, grad=True, tf32=False):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)
    q, k, v = r(B, H, Lq, D), r(B, H, Lk, D), r(B, H, Lk, D)
    qf = r(fb, H, Lq, R) if R else None
    kf = r(fb, H, Lk, R) if R else None
    bias = r(*bias_shape) if bias_shape else None
    km = (torch.rand(B, Lk, generator=g) > 0.3) if mask else None
    ops = tfb._Operands(q, k, v, qf, kf, bias, km, D ** -0.5)
    LOG.clear()
    t0 = time.perf_counter()
    o, stats = tfb._forward(q, k, v, ops, r(B, H, Lq, D) if (gate and not grad) else None)
    if grad:
        needs = (True, True, True, R > 0, R > 0, bias is not None, False, False)
        tfb._backward(q, k, v, o, stats, r(B, H, Lq, D), ops, needs)
    return time.perf_counter() - t0, list(LOG)
