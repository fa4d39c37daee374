"""Session 6 (issue 17) device measurements of the backward, in one call (bwd_profile.sh).
Stages, in the order they run (--stages):

1. profile: at N = 1024 and 1170 (triangle shape: N rows x H = 4 x N x D = 32, bf16), per case
   the fwd and fwd+bwd medians (triton.testing.do_bench, as scripts/bench_attention.py) and the
   CUDA time per kernel name per fwd+bwd (torch.profiler). Cases: SDPA without bias (the floor);
   ours without bias; dense bias [1, H, N, N] without and with its gradient; shared factors
   R = 32; the bias / factor cases again with the opt-in switches (+pad: tiles.DS_TILE_PAD,
   the tile-padded dS sum; +stagger: tiles.DQ_STAGGER, the staggered query-block loop, in
   sessions 6-10; +tmadq / +tmads: tiles.TMA_REDUCE, the bulk reduce-adds of dQ / dS, session 11).
   The differences split the backward: the kernel itself, the bias read, the dS row sum.
   Every case sets the switches explicitly: a name without "+pad" runs with the padded sum
   off, although it is on by default since session 9, and one without "+tmadq" / "+tmads" with
   the atomics, although the bulk reduce-adds are the default on sm_90 since session 11.
2. others: the single attention (B = 1, 16 heads x 24) and the diffusion transformer's (5
   samples, 16 heads x 48, bias shared by the samples): floor, default, +pad; fwd,
   fwd+bwd (do_bench: host time included) and the summed kernel time per fwd+bwd (profiler),
   which tells how much of do_bench's time is the host's.
3. diffusion_sweep: the diffusion shape's backward configs (DIFFUSION_CANDIDATES: one row per
   program, 8 warps, narrower tiles; the old default spilled 1144 B at N = 1170) x switches off / +pad.
4. sweep: at every triangle N of --sizes, dense bias and factors, each candidate backward
   config (BWD_CANDIDATES, through tiles.CONFIG_OVERRIDES) x switches off / +pad: fwd+bwd
   median, its gradients against the default config's (rel. error), the tiles each kernel
   was launched with; also the floor and our default forward at each N (the fwd target).
5. flex: FlexAttention with the bias at N = 1024 / 1170 (compiles per shape: last).

Everything goes to OUT/bwd_profile.json (rewritten after every record); a short table is
printed last (OUT/summary.txt). A time budget (--budget-s) skips what would not fit, recorded
as skipped.

    python benchmarks/scripts/session6/bwd_profile.py --out $OUT            # device
    python benchmarks/scripts/session6/bwd_profile.py --out /tmp/x --dry-run  # CPU check, interpreter
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

# candidate backward configs at the triangle shape (D = 32; bias or factors R = 32, width 64):
# (block_m, block_n, num_warps, num_stages, rows per program, fuse_ds[, ds_sum config])
BWD_CANDIDATES: dict[str, dict] = {
    # tiles.default_config: (64, 64, 4, 2, 2, fuse_ds) since session 9 (before: 3 stages, 80 / 304 B
    # spill stack at N = 1024 / 1170)
    "default": {},
    "m64n64w4s3r2": dict(block_m=64, block_n=64, num_warps=4, num_stages=3, rows=2, fuse_ds=True),  # the old default
    # one row per program: no spills (223 registers); 13.49 against 12.13 ms at N = 1024 (session 3)
    "m64n64w4s3r1": dict(block_m=64, block_n=64, num_warps=4, num_stages=3, rows=1, fuse_ds=True),
    # 8 warps: no spills at 1024, 8-16 B at 1170; 17.96 ms at 1024 (session 3)
    "m64n64w8s3r2": dict(block_m=64, block_n=64, num_warps=8, num_stages=3, rows=2, fuse_ds=True),
    "m64n32w4s3r2": dict(block_m=64, block_n=32, num_warps=4, num_stages=3, rows=2, fuse_ds=True),
    "m32n64w4s3r2": dict(block_m=32, block_n=64, num_warps=4, num_stages=3, rows=2, fuse_ds=True),
    # two stages: 32 / 168 B of spill stack instead of 80 / 304
    "m64n64w4s2r2": dict(block_m=64, block_n=64, num_warps=4, num_stages=2, rows=2, fuse_ds=True),
    "m32n32w4s3r2": dict(block_m=32, block_n=32, num_warps=4, num_stages=3, rows=2, fuse_ds=True),  # no spills
    # not fused: the backward without the dS sum, then _ds_sum_kernel (4 programs per tile)
    "m64n64w4s3r2+ds_sum": dict(
        block_m=64, block_n=64, num_warps=4, num_stages=3, rows=2, fuse_ds=False, ds_sum=(64, 64, 4, 3, 4)
    ),
}
# compiled on the CPU only (benchmarks/session6/cpu_compile/): left out of the device sweep
COMPILE_ONLY_CANDIDATES: dict[str, dict] = {
    # 14.67 against 12.13 ms at N = 1024 (session 3); 182 KiB of shared memory
    "m128n64w8s3r2": dict(block_m=128, block_n=64, num_warps=8, num_stages=3, rows=2, fuse_ds=True),
    # four stages: 440 B of spill stack at N = 1170
    "m64n64w4s4r2": dict(block_m=64, block_n=64, num_warps=4, num_stages=4, rows=2, fuse_ds=True),
    "m64n64w8s2r2": dict(block_m=64, block_n=64, num_warps=8, num_stages=2, rows=2, fuse_ds=True),
}
# the diffusion transformer's backward (5 samples, 16 heads x 48, bias shared by the samples):
# the default (two rows per program, 4 warps) has 1144 B of spill stack at N = 1170 in the sm_90
# cubin; one row per program 184 B (0 with the padded dS sum), 8 warps or narrower tiles none
DIFFUSION_CANDIDATES: dict[str, dict] = {
    "default": {},  # since session 9 (32, 64, 4, 3, 1, fuse_ds), the m32n64w4s3r1 below
    "m64n64w4s3r2": dict(block_m=64, block_n=64, num_warps=4, num_stages=3, rows=2, fuse_ds=True),  # the old default
    "m64n64w4s3r1": dict(block_m=64, block_n=64, num_warps=4, num_stages=3, rows=1, fuse_ds=True),
    "m64n64w8s3r1": dict(block_m=64, block_n=64, num_warps=8, num_stages=3, rows=1, fuse_ds=True),
    "m64n32w4s3r1": dict(block_m=64, block_n=32, num_warps=4, num_stages=3, rows=1, fuse_ds=True),
    "m32n64w4s3r1": dict(block_m=32, block_n=64, num_warps=4, num_stages=3, rows=1, fuse_ds=True),
}
DIFFUSION_SIZES = [1170, 384, 768]
# candidate forward configs at the triangle shape (session 10, issue 17's forward target): four rows
# per program read each shared bias / factor tile once for four rows. Compiled for sm_90 on the CPU
# (benchmarks/session10/fwd_rows_cpu_compile/): m64n32w4s3r4 has no spills (168-184 registers),
# m64n64w4s3r4 255 registers (spills at 1170 / with factors), the default 167-213. Timed in
# session 16 (H100, benchmarks/session16/fwd_rows4_h100/): m64n32w4s3r4 25-32 % slower than the
# default with a dense bias, 0-21 % with factors (N = 384-2048).
FWD_CANDIDATES: dict[str, dict] = {
    "default": {},  # (64, 64, 4, 3, 2)
    "m64n32w4s3r4": dict(block_m=64, block_n=32, num_warps=4, num_stages=3, rows=4),
    "m64n64w4s3r4": dict(block_m=64, block_n=64, num_warps=4, num_stages=3, rows=4),
    "m128n64w8s3r2": dict(block_m=128, block_n=64, num_warps=8, num_stages=3, rows=2),
    "m64n32w4s3r2": dict(block_m=64, block_n=32, num_warps=4, num_stages=3, rows=2),
    "m64n64w4s4r2": dict(block_m=64, block_n=64, num_warps=4, num_stages=4, rows=2),  # session 12
    # session 12: 8 warps, whose wgmma ptxas does not serialize at N = 1024 (the default's, 4 warps,
    # it does: "C7515 ... serialized due to non wgmma instructions defining accumulator registers")
    "m64n64w8s3r2": dict(block_m=64, block_n=64, num_warps=8, num_stages=3, rows=2),
    "m64n128w8s3r2": dict(block_m=64, block_n=128, num_warps=8, num_stages=3, rows=2),
    "m64n64w8s3r4": dict(block_m=64, block_n=64, num_warps=8, num_stages=3, rows=4),
}
FWD_SWEEP_SIZES = [1024, 1170, 256, 512, 2048]
TRIANGLE_SIZES = [1024, 1170, 256, 384, 512, 768, 1000, 1536, 2048]  # the N, most informative first


def candidate_overrides(
    cand: dict, block_d: int, block_r: int, has_bias: bool, elem_bytes: int = 2, kind: str = "bwd"
) -> list[dict]:
    """Entries for tiles.load_config_overrides (block_r 0 without factors) that select ``cand``
    for the ``kind`` kernel ("bwd": BWD_CANDIDATES, "fwd": FWD_CANDIDATES)."""
    if not cand:
        return []
    key = dict(block_d=block_d, block_r=block_r, has_bias=has_bias, elem_bytes=elem_bytes)
    tile = {k: cand[k] for k in ("block_m", "block_n", "num_warps", "num_stages", "rows")}
    entries = [dict(kind=kind, **key, **tile, fuse_ds=cand.get("fuse_ds", False))]
    if "ds_sum" in cand:
        bm, bn, w, s, splits = cand["ds_sum"]
        entries.append(
            dict(kind="ds_sum", **key, block_m=bm, block_n=bn, num_warps=w, num_stages=s, rows=1, splits=splits)
        )
    return entries


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out/session6"))
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, fp32, tiny sizes")
    p.add_argument("--budget-s", type=float, default=430.0, help="stop starting new measurements after this")
    p.add_argument("--stages", default="profile,fwd_sweep,others,diffusion_sweep,sweep,flex")
    p.add_argument("--sizes", default=None, help="comma-separated triangle N of the sweep")
    p.add_argument("--candidates", default=None, help="comma-separated names from BWD_CANDIDATES")
    p.add_argument("--profile-sizes", default=None, help="comma-separated triangle N of the profile stage")
    p.add_argument("--fwd-sizes", default=None, help="comma-separated triangle N of the forward sweep")
    p.add_argument("--fwd-candidates", default=None, help="comma-separated names from FWD_CANDIDATES")
    p.add_argument("--methods", default=None, help="comma-separated names from PROFILE_METHODS (profile stage)")
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.dry_run:
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are defined: before the import

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# appended, not prepended: a PYTHONPATH package (e.g. an older checkout, for an A/B in one call) comes
# first (session 12: prepended, it shadowed the older package, and its "old" profile ran this one)
sys.path.append(str(Path(__file__).resolve().parents[3]))
from pairformer_fb.kernel import flash_bias_attention, tiles  # noqa: E402
from pairformer_fb.kernel.op import pow2_at_least_16  # noqa: E402


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


class Recorder:
    def __init__(self, out: Path, env: dict):
        self.path = out / "bwd_profile.json"
        self.data = {"environment": env, "profile": [], "fwd_sweep": [], "sweep": [], "others": [], "flex": []}

    def add(self, stage: str, rec: dict) -> None:
        self.data[stage].append(rec)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)
        print(f"[{stage}] " + json.dumps({k: v for k, v in rec.items() if k not in ("kernels",)}), flush=True)


# ------------------------------------------------------------------------------------------
# inputs, methods, timing
# ------------------------------------------------------------------------------------------
def make_inputs(B, H, N, D, R, dtype, device, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).to(device=device, dtype=dtype)

    q, k, v = rnd(B, H, N, D), rnd(B, H, N, D), rnd(B, H, N, D)
    bias = rnd(1, H, N, N)
    qf, kf = rnd(1, H, N, R, std=R**-0.25), rnd(1, H, N, R, std=R**-0.25)
    do = rnd(B, H, N, D)
    return dict(q=q, k=k, v=v, bias=bias, qf=qf, kf=kf, do=do)


SWITCHES = {"pad": "DS_TILE_PAD", "stagger": "DQ_STAGGER"}
# session 11: tiles.TMA_REDUCE's kinds, the bulk tensor reduce-adds of dQ / of the fused dS sum
TMA_SWITCHES = {"tmadq": "dq", "tmads": "ds"}


@contextlib.contextmanager
def switches(names):
    """The backward switches of tiles (see SWITCHES, TMA_SWITCHES) set explicitly inside the
    block: those named on, the others off (session 9 turned the padded dS sum on by default, so a
    name without "+pad" measures it off); their previous values restored after."""
    unknown = set(names) - set(SWITCHES) - set(TMA_SWITCHES)
    assert not unknown, f"unknown switches {unknown}"
    before = {attr: getattr(tiles, attr) for attr in [*SWITCHES.values(), "TMA_REDUCE"]}
    for name, attr in SWITCHES.items():
        setattr(tiles, attr, name in names)
    tiles.TMA_REDUCE = frozenset(kind for name, kind in TMA_SWITCHES.items() if name in names)
    try:
        yield
    finally:
        for attr, value in before.items():
            setattr(tiles, attr, value)


def split_name(name: str) -> tuple[str, list[str]]:
    """'fb_bias+pad+stagger' -> ('fb_bias', ['pad', 'stagger'])."""
    base, *sw = name.split("+")
    return base, sw


def method(name: str, t: dict):
    """(forward closure, tensors that get gradients)."""
    name = split_name(name)[0]
    q, k, v, bias, qf, kf = (t[x] for x in ("q", "k", "v", "bias", "qf", "kf"))
    if name == "sdpa_floor":
        return (lambda: F.scaled_dot_product_attention(q, k, v)), [q, k, v]
    if name == "fb_nobias":
        return (lambda: flash_bias_attention(q, k, v, backend="triton")), [q, k, v]
    if name == "fb_bias_nograd":
        return (lambda: flash_bias_attention(q, k, v, bias=bias, backend="triton")), [q, k, v]
    if name == "fb_bias":
        return (lambda: flash_bias_attention(q, k, v, bias=bias, backend="triton")), [q, k, v, bias]
    if name == "fb_factors":
        return (lambda: flash_bias_attention(q, k, v, q_factors=qf, k_factors=kf, backend="triton")), [q, k, v, qf, kf]
    if name == "flex_bias":
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention, dynamic=False)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[0, h, q_idx, kv_idx]

        return (lambda: flex(q, k, v, score_mod=score_mod)), [q, k, v, bias]
    raise ValueError(name)


def fwd_bwd_fn(fn, ins, do):
    def run():
        for x in ins:
            x.grad = None
        return torch.autograd.grad(fn(), ins, do)

    return run


def set_grads(ins, on: bool):
    for x in ins:
        x.requires_grad_(on)


def median_ms(fn, device, warmup=25, rep=100) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    fn()
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def kernel_times(fn, device, iters: int) -> dict:
    """Per kernel name: device microseconds and launches per call of fn (torch.profiler)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize()
    with profile(activities=acts) as prof:
        for _ in range(iters):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    out: dict[str, dict] = {}
    for e in prof.events():
        on_device = e.device_type == DeviceType.CUDA
        if device.type == "cuda" and not on_device:
            continue
        if device.type != "cuda" and not e.name.startswith(("_", "aten::")):  # CPU check: op names only
            continue
        rec = out.setdefault(e.name, {"us": 0.0, "calls": 0})
        rec["us"] += e.time_range.elapsed_us() / iters
        rec["calls"] += 1
    for rec in out.values():
        rec["calls"] = rec["calls"] / iters
        rec["us"] = round(rec["us"], 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["us"]))


@contextlib.contextmanager
def used_configs():
    """The tiles each kernel kind was launched with inside the block (recorded from tiles._config)."""
    used: dict[str, list] = {}
    orig = tiles._config

    def recording(kind, ops):
        cfg = orig(kind, ops)
        used[kind] = list(dataclasses.astuple(cfg))
        return cfg

    tiles._config = recording
    try:
        yield used
    finally:
        tiles._config = orig


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def failure(e: Exception) -> str:
    if isinstance(e, torch.OutOfMemoryError):
        return "OOM"
    return f"error: {type(e).__name__}: {' '.join(str(e).split())[:300]}"


def free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------
PROFILE_METHODS = [
    "sdpa_floor",
    "fb_nobias",
    "fb_bias_nograd",
    "fb_bias",
    "fb_bias+pad",
    "fb_bias+pad+tmadq",
    "fb_bias+pad+tmads",
    "fb_bias+pad+tmadq+tmads",
    "fb_factors",
    "fb_factors+pad",
    "fb_factors+pad+tmadq+tmads",
]  # session 11: the stagger (measured slower in session 9) gave its place to the bulk reduce-adds


def measure_case(name, t, device, iters, with_kernels=True, warmup=25, rep=100) -> dict:
    rec = {"method": name}
    fn, ins = method(name, t)
    try:
        with switches(split_name(name)[1]):
            set_grads(ins, False)
            with torch.no_grad():
                rec["fwd_ms"] = median_ms(fn, device, warmup, rep)
            set_grads(ins, True)
            fb = fwd_bwd_fn(fn, ins, t["do"])
            rec["fwd_bwd_ms"] = median_ms(fb, device, warmup, rep)
            if with_kernels:
                rec["kernels"] = kernel_times(fb, device, iters)
                rec["kernel_us_total"] = round(sum(x["us"] for x in rec["kernels"].values()), 1)
                with torch.no_grad():
                    fwd_kernels = kernel_times(fn, device, iters)
                rec["fwd_kernel_us_total"] = round(sum(x["us"] for x in fwd_kernels.values()), 1)
        rec["status"] = "ok"
    except Exception as e:  # one failing case must not end the run
        rec["status"] = failure(e)
    finally:
        set_grads(ins, False)
        free(device)
    return rec


def stage_profile(sizes, cfg, rec: Recorder, budget: Budget, methods=None):
    for n in sizes:
        t = make_inputs(cfg["rows"] or n, cfg["H"], n, cfg["D"], cfg["R"], cfg["dtype"], cfg["device"], seed=n)
        for name in methods or PROFILE_METHODS:
            if budget.left() < 30:
                rec.add("profile", {"n": n, "method": name, "status": "skipped: budget"})
                continue
            r = measure_case(name, t, cfg["device"], cfg["iters"])
            rec.add("profile", {"n": n, "batch": cfg["rows"] or n, "heads": cfg["H"], "head_dim": cfg["D"], **r})
        del t
        free(cfg["device"])


def stage_fwd_sweep(sizes, cfg, rec: Recorder, budget: Budget, candidates=None):
    """Forward only, each FWD_CANDIDATES config at the triangle shape, dense bias and factors;
    outputs checked against the default's."""
    device = cfg["device"]
    candidates = candidates or FWD_CANDIDATES
    for n in sizes:
        t = make_inputs(cfg["rows"] or n, cfg["H"], n, cfg["D"], cfg["R"], cfg["dtype"], device, seed=n)
        base = {"kind": "triangle", "n": n, "batch": cfg["rows"] or n, "heads": cfg["H"], "head_dim": cfg["D"]}
        if budget.left() < 30:
            rec.add("fwd_sweep", {**base, "status": "skipped: budget"})
            continue
        fn, _ = method("sdpa_floor", t)
        with torch.no_grad():
            rec.add("fwd_sweep", {**base, "variant": "floor", "fwd_ms": median_ms(fn, device, 10, 40), "status": "ok"})
        for variant in ("bias", "factors"):
            fn, _ = method("fb_bias" if variant == "bias" else "fb_factors", t)
            block_r = pow2_at_least_16(cfg["R"]) if variant == "factors" else 0
            elem_bytes = torch.tensor([], dtype=cfg["dtype"]).element_size()
            ref = None
            for cname, cand in candidates.items():
                r = {**base, "variant": variant, "candidate": cname}
                if budget.left() < 20:
                    rec.add("fwd_sweep", {**r, "status": "skipped: budget"})
                    continue
                _set_candidate(cand, pow2_at_least_16(cfg["D"]), block_r, variant == "bias", elem_bytes, "fwd")
                try:
                    with torch.no_grad(), used_configs() as used:
                        out = fn().float()
                        r["configs"] = used
                        ref = out if ref is None else ref
                        r["max_rel_err_vs_default"] = rel(out, ref)
                        del out
                        r["fwd_ms"] = median_ms(fn, device, 10, 40)
                    r["status"] = "ok" if r["max_rel_err_vs_default"] < 1e-2 else "mismatch"
                except Exception as e:
                    r["status"] = failure(e)
                finally:
                    tiles.CONFIG_OVERRIDES.clear()
                    free(device)
                rec.add("fwd_sweep", r)
            del ref
        del t
        free(device)


def _set_candidate(cand: dict, block_d: int, block_r: int, has_bias: bool, elem_bytes: int, kind: str = "bwd"):
    tiles.CONFIG_OVERRIDES.clear()
    for e in candidate_overrides(cand, block_d, block_r, has_bias, elem_bytes, kind):
        key = tiles.config_key(e["kind"], e["block_d"], e["block_r"], e["has_bias"], e["elem_bytes"])
        tiles.CONFIG_OVERRIDES[key] = tiles.KernelConfig(
            e["block_m"],
            e["block_n"],
            e["num_warps"],
            e["num_stages"],
            e["rows"],
            e.get("splits", 1),
            e.get("fuse_ds", False),
        )


def stage_sweep(
    sizes, names, cfg, rec: Recorder, budget: Budget, kind="triangle", candidates=None, variants=("bias", "factors")
):
    device = cfg["device"]
    candidates = candidates or BWD_CANDIDATES
    for n in sizes:
        if budget.left() < 40:
            rec.add("sweep", {"kind": kind, "n": n, "status": "skipped: budget"})
            continue
        t = make_inputs(cfg["rows"] or n, cfg["H"], n, cfg["D"], cfg["R"], cfg["dtype"], device, seed=n)
        base = {"kind": kind, "n": n, "batch": cfg["rows"] or n, "heads": cfg["H"], "head_dim": cfg["D"]}
        for name in ("sdpa_floor",):
            rec.add("sweep", {**base, "variant": "floor", **measure_case(name, t, device, 0, False, 10, 40)})
        for variant in variants:
            mname = "fb_bias" if variant == "bias" else "fb_factors"
            block_d = pow2_at_least_16(cfg["D"])
            block_r = pow2_at_least_16(cfg["R"]) if variant == "factors" else 0
            elem_bytes = torch.tensor([], dtype=cfg["dtype"]).element_size()
            fn, ins = method(mname, t)
            ref = None
            for cname in names:
                cand = candidates[cname]
                # session 9: the stagger measured slower; pad is the default now. Session 11: the
                # default tiles also with the bulk reduce-adds of dQ and dS (tiles.TMA_REDUCE)
                tma = [["pad", "tmadq", "tmads"]] if cname == "default" else []
                for on in ([], ["pad"], *tma):
                    r = {**base, "variant": variant, "candidate": cname, "switches": "+".join(on)}
                    if budget.left() < 25:
                        rec.add("sweep", {**r, "status": "skipped: budget"})
                        continue
                    _set_candidate(cand, block_d, block_r, variant == "bias", elem_bytes)
                    try:
                        with switches(on):
                            if cname == "default" and not on:
                                set_grads(ins, False)
                                with torch.no_grad():
                                    r["fwd_ms"] = median_ms(fn, device, 10, 40)
                            set_grads(ins, True)
                            fb = fwd_bwd_fn(fn, ins, t["do"])
                            with used_configs() as used:
                                got = [x.float() for x in fb()]
                            r["configs"] = used
                            if ref is None:
                                ref = got  # the first (default) candidate's gradients
                            r["max_rel_err_vs_default"] = max(rel(a, b) for a, b in zip(got, ref))
                            del got
                            r["fwd_bwd_ms"] = median_ms(fb, device, 10, 40)
                        r["status"] = "ok" if r["max_rel_err_vs_default"] < 1e-2 else "mismatch"
                    except Exception as e:
                        r["status"] = failure(e)
                    finally:
                        tiles.CONFIG_OVERRIDES.clear()
                        set_grads(ins, False)
                        free(device)
                    rec.add("sweep", r)
            del ref
        del t
        free(device)


OTHER_SHAPES = {
    # kind: (batch, heads, head_dim, sizes)
    "single": (1, 16, 24, [384, 768, 1536, 3072]),
    "diffusion": (5, 16, 48, [384, 768, 1170]),
}


def stage_others(cfg, rec: Recorder, budget: Budget, shapes=OTHER_SHAPES):
    for kind, (B, H, D, sizes) in shapes.items():
        for n in sizes:
            t = make_inputs(B, H, n, D, 32, cfg["dtype"], cfg["device"], seed=n)
            for name in ("sdpa_floor", "fb_bias", "fb_bias+pad"):
                if budget.left() < 20:
                    rec.add("others", {"kind": kind, "n": n, "method": name, "status": "skipped: budget"})
                    continue
                r = measure_case(name, t, cfg["device"], cfg["iters"])
                rec.add("others", {"kind": kind, "n": n, "batch": B, "heads": H, "head_dim": D, **r})
            del t
            free(cfg["device"])


def stage_flex(sizes, cfg, rec: Recorder, budget: Budget):
    if cfg["device"].type != "cuda":
        rec.add("flex", {"status": "skipped: FlexAttention is measured on CUDA only"})
        return
    for n in sizes:
        if budget.left() < 90:  # two compiles per shape
            rec.add("flex", {"n": n, "method": "flex_bias", "status": "skipped: budget"})
            continue
        t = make_inputs(cfg["rows"] or n, cfg["H"], n, cfg["D"], cfg["R"], cfg["dtype"], cfg["device"], seed=n)
        rec.add("flex", {"n": n, **measure_case("flex_bias", t, cfg["device"], 0, False)})
        del t
        free(cfg["device"])


def summary(data: dict) -> str:
    lines = ["== profile (ms; kernel us per fwd+bwd, top 4)"]
    floors = {r["n"]: r for r in data["profile"] if r.get("method") == "sdpa_floor" and r.get("status") == "ok"}
    for r in data["profile"]:
        if r.get("status") != "ok":
            lines.append(f"N={r['n']} {r['method']}: {r.get('status')}")
            continue
        f = floors.get(r["n"])
        ratio = f" ({r['fwd_ms'] / f['fwd_ms']:.2f}x / {r['fwd_bwd_ms'] / f['fwd_bwd_ms']:.2f}x)" if f else ""
        top = ", ".join(f"{k[:28]} {v['us']:.0f}" for k, v in list(r.get("kernels", {}).items())[:4])
        lines.append(f"N={r['n']} {r['method']}: {r['fwd_ms']:.3f} / {r['fwd_bwd_ms']:.3f}{ratio} | {top}")
    lines.append("== forward sweep: fwd ms per N and operand (x floor) per candidate")
    fsw = [r for r in data["fwd_sweep"] if r.get("status") == "ok"]
    ffloor = {r["n"]: r["fwd_ms"] for r in fsw if r.get("variant") == "floor"}
    for n in sorted(ffloor):
        for variant in ("bias", "factors"):
            rs = [r for r in fsw if r["n"] == n and r.get("variant") == variant]
            cells = ", ".join(f"{r['candidate']} {r['fwd_ms']:.3f} ({r['fwd_ms'] / ffloor[n]:.2f}x)" for r in rs)
            lines.append(f"N={n} {variant}: floor {ffloor[n]:.3f} | {cells}")
    bad = [r for r in data["fwd_sweep"] if r.get("status") not in ("ok", None) and "skipped" not in r.get("status", "")]
    lines.append(f"forward sweep cases not ok: {len(bad)}")
    lines.append("== sweep: best fwd+bwd per N and operand (x floor), default and default+switches")
    sweep = [r for r in data["sweep"] if r.get("status") == "ok"]
    floor = {(r["kind"], r["n"]): r["fwd_bwd_ms"] for r in sweep if r.get("variant") == "floor"}
    for kind, n in sorted({(r["kind"], r["n"]) for r in sweep}):
        for variant in ("bias", "factors"):
            rs = [r for r in sweep if (r["kind"], r["n"]) == (kind, n) and r.get("variant") == variant]
            if not rs or (kind, n) not in floor:
                continue
            fl = floor[(kind, n)]
            best = min(rs, key=lambda r: r["fwd_bwd_ms"])
            dflt = {r["switches"]: r["fwd_bwd_ms"] for r in rs if r["candidate"] == "default"}
            off, on = dflt.get("", float("nan")), dflt.get("pad", float("nan"))
            tma = dflt.get("pad+tmadq+tmads", float("nan"))
            lines.append(
                f"{kind} N={n} {variant}: floor {fl:.3f} default {off:.3f} ({off / fl:.2f}x) "
                f"+pad {on:.3f} ({on / fl:.2f}x) +pad+tma {tma:.3f} ({tma / fl:.2f}x) best {best['candidate']} "
                f"[{best['switches']}] {best['fwd_bwd_ms']:.3f} ({best['fwd_bwd_ms'] / fl:.2f}x)"
            )
    bad = [r for r in data["sweep"] if r.get("status") not in ("ok", None) and "skipped" not in r.get("status", "")]
    lines.append(f"sweep cases not ok: {len(bad)}")
    lines.append("== others (fwd / fwd+bwd ms, kernel us per fwd+bwd)")
    for r in data["others"]:
        if r.get("status") == "ok":
            lines.append(
                f"{r['kind']} N={r['n']} {r['method']}: {r['fwd_ms']:.3f} / {r['fwd_bwd_ms']:.3f} | gpu {r['kernel_us_total']:.0f}"
            )
    for r in data["flex"]:
        lines.append(f"flex N={r.get('n')}: {r.get('fwd_ms')} / {r.get('fwd_bwd_ms')} {r.get('status')}")
    return "\n".join(lines)


def main(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float32  # the interpreter's bf16 products are wrong
        cfg = dict(device=device, dtype=dtype, rows=3, H=2, D=32, R=8, iters=1)
        profile_sizes, sweep_sizes, flex_sizes, fwd_sizes = [20], [20, 37], [20], [37]
        names = ["default", "m64n64w4s3r1", "m64n64w4s3r2+ds_sum"]
        shapes = {"single": (1, 2, 24, [21]), "diffusion": (2, 2, 48, [19])}
        diff_shape, diff_sizes = (2, 2, 48), [19]
    else:
        assert torch.cuda.is_available(), "the device run needs CUDA (or --dry-run)"
        device, dtype = torch.device("cuda"), torch.bfloat16
        cfg = dict(device=device, dtype=dtype, rows=None, H=4, D=32, R=32, iters=3)  # N rows
        # 256 (session 10): where the gap to the floor is widest (sweep at 256: 2.9-4.1x), split by kernel
        profile_sizes, sweep_sizes, flex_sizes, fwd_sizes = (
            [1024, 1170, 256],
            TRIANGLE_SIZES,
            [1024, 1170],
            FWD_SWEEP_SIZES,
        )
        names = list(BWD_CANDIDATES)
        shapes = OTHER_SHAPES
        diff_shape, diff_sizes = (5, 16, 48), DIFFUSION_SIZES
    if args.sizes:
        sweep_sizes = [int(x) for x in args.sizes.split(",")]
    if args.candidates:
        names = args.candidates.split(",")
    if args.profile_sizes:
        profile_sizes = [int(x) for x in args.profile_sizes.split(",")]
    if args.fwd_sizes:
        fwd_sizes = [int(x) for x in args.fwd_sizes.split(",")]
    fwd_candidates = None
    if args.fwd_candidates:
        names_f = args.fwd_candidates.split(",")
        if any(c not in FWD_CANDIDATES for c in names_f):
            sys.exit(f"--fwd-candidates: expected names from {list(FWD_CANDIDATES)}, got {names_f}")
        fwd_candidates = {c: FWD_CANDIDATES[c] for c in names_f}
    methods = args.methods.split(",") if args.methods else None
    unknown = [m for m in methods or [] if split_name(m)[0] not in {split_name(x)[0] for x in PROFILE_METHODS}]
    if unknown:
        sys.exit(f"--methods: unknown {unknown}; expected names of PROFILE_METHODS with +switches")
    import platform

    import triton

    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (TRITON_INTERPRET=1)",
        "dtype": str(dtype),
        "triangle": {"heads": cfg["H"], "head_dim": cfg["D"], "rank": cfg["R"]},
        "package": str(Path(tiles.__file__).resolve().parents[1]),  # which pairformer_fb ran
    }
    print(f"pairformer_fb from {env['package']}", flush=True)
    rec = Recorder(out, env)
    stages = args.stages.split(",")
    t0 = time.perf_counter()
    if "profile" in stages:
        stage_profile(profile_sizes, cfg, rec, budget, methods)
        print(f"profile done {time.perf_counter() - t0:.0f}s", flush=True)
    if "fwd_sweep" in stages:
        stage_fwd_sweep(fwd_sizes, cfg, rec, budget, fwd_candidates)
        print(f"forward sweep done {time.perf_counter() - t0:.0f}s", flush=True)
    if "others" in stages:
        stage_others(cfg, rec, budget, shapes)
        print(f"others done {time.perf_counter() - t0:.0f}s", flush=True)
    if "diffusion_sweep" in stages:
        dcfg = {**cfg, "rows": diff_shape[0], "H": diff_shape[1], "D": diff_shape[2]}
        stage_sweep(
            diff_sizes, list(DIFFUSION_CANDIDATES), dcfg, rec, budget, "diffusion", DIFFUSION_CANDIDATES, ("bias",)
        )
        print(f"diffusion sweep done {time.perf_counter() - t0:.0f}s", flush=True)
    if "sweep" in stages:
        stage_sweep(sweep_sizes, names, cfg, rec, budget)
        print(f"sweep done {time.perf_counter() - t0:.0f}s", flush=True)
    if "flex" in stages:
        stage_flex(flex_sizes, cfg, rec, budget)
    text = summary(rec.data)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main(ARGS)
