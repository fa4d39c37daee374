"""Seeded fuzzing of ``flash_bias_attention`` against a float64 oracle, with each case's first
call timed (compilation included): the evidence that the op is right, and never stalls, on any
supported combination of shapes, dtypes, broadcasts, masks, gates and gradients.

A case draws B, H, Lq, Lk (1 to ``max_len``, half log-uniform, half uniform, so short, long,
odd and tile-straddling lengths all come up), D (8 to 128), the factors (none, or rank 1 to 128, batch 1 or B), the dense bias
(none, or one of the broadcast patterns [1|B, 1|H, 1|Lq, Lk]), a key mask (with fully masked
rows), a gate, whether gradients are taken, and the dtype (bf16, fp16, fp32 with and without
TF32). The oracle is the op's formula in float64 on the same (rounded) inputs, except that the
key mask is added in fp32 as the hosts add it: a fully masked row's logits all round to -1e9,
so the row averages v uniformly (in float64 they would keep their differences).

Errors are norm-wise, ``|a - b| / |b|``. Where the true gradient is zero (a single key, rows
with one unmasked key: the softmax is constant) a relative error is undefined, and the error is
absolute instead: the RMS of ``a`` over the scale ``sqrt(D * B * H * Lq)`` that a gradient built
from dS has with unit-scale inputs (a dot of D unit terms, summed over up to B * H * Lq score
rows); the kernels' dS there is the rounding of dP - rowsum(dO * O), about fp32's u. The tolerances
are multiples of each dtype's unit roundoff ``u`` (the precision of the kernel's products):
``FWD_ULPS * u`` forward, ``BWD_ULPS * u`` for gradients (P and dS are rounded to the input
dtype before their products, and the bias gradient sums many such rows), times
``logit_error_scale`` where the products themselves round their inputs (TF32)."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..cli import atomic_write
from ..kernel.reference import MASK_NEG

if TYPE_CHECKING:
    from ..kernel.op import Backend

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}
# unit roundoff of the products' inputs: bf16 8 significant bits, fp16 and tf32 11; fp32 24 bits,
# times 64 for its accumulations (a sqrt(n) u bound for sums of up to 4096 terms)
UNIT_ROUNDOFF = {"bf16": 2.0**-8, "fp16": 2.0**-11, "tf32": 2.0**-11, "fp32": 2.0**-24 * 64}
FWD_ULPS, BWD_ULPS = 4, 16
BIAS_PATTERNS = ("B H Lq Lk", "1 H Lq Lk", "1 1 Lq Lk", "B 1 Lq Lk", "1 H 1 Lk", "B H 1 Lk", "1 1 1 Lk")


@dataclass(frozen=True)
class FuzzCase:
    index: int
    seed: int
    dtype: str  # bf16 | fp16 | fp32 (full-precision products) | tf32 (fp32 with TF32 allowed)
    B: int
    H: int
    Lq: int
    Lk: int
    D: int
    R: int  # 0: no factors
    factor_batch: int
    bias: str | None  # a BIAS_PATTERNS entry
    mask: bool
    fully_masked_rows: tuple[int, ...]
    gate: bool
    grad: bool

    def bias_shape(self) -> tuple[int, ...] | None:
        if self.bias is None:
            return None
        sizes = {"B": self.B, "H": self.H, "Lq": self.Lq, "Lk": self.Lk, "1": 1}
        return tuple(sizes[s] for s in self.bias.split())

    def mask_shape(self) -> tuple[int, int] | None:
        """The key mask's shape: [B, Lk] where rows are fully masked, else one of the broadcast
        patterns [B | 1, Lk | 1], picked by the case's seed (no draw: the case stream is unchanged)."""
        if not self.mask:
            return None
        if self.fully_masked_rows:
            return (self.B, self.Lk)
        return ((self.B, self.Lk), (self.B, self.Lk), (1, self.Lk), (self.B, 1), (1, 1))[self.seed % 5]

    def describe(self) -> str:
        parts = [self.dtype, f"B{self.B} H{self.H} Lq{self.Lq} Lk{self.Lk} D{self.D}"]
        if self.R:
            parts.append(f"R{self.R}x{self.factor_batch}")
        if self.bias:
            parts.append(f"bias[{self.bias}]")
        if self.mask:
            rows, keys = self.mask_shape() or (0, 0)  # (a mask is set)
            parts.append(f"mask[{rows}, {keys}]({len(self.fully_masked_rows)} full)")
        parts += ["gate"] * self.gate + ["grad"] * self.grad
        return " ".join(parts)


def named_cases(seed: int = 0) -> list[FuzzCase]:
    """The combinations whose first call did not return within 30-130 s on an H200 before the
    tile table was fitted (issue 14): fp32 backward at D >= 96, fp32 backward with factors
    (R = 32, D = 48), fp16 backward at D = 96 with R = 96; each with and without TF32 for fp32.
    Indices are negative so they never collide with drawn cases."""
    specs = [
        ("fp32", 96, 0, "1 H Lq Lk"),
        ("tf32", 96, 0, "1 H Lq Lk"),
        ("fp32", 128, 0, "1 H Lq Lk"),
        ("fp32", 48, 32, None),
        ("tf32", 48, 32, None),
        ("fp16", 96, 96, "1 H Lq Lk"),
        ("bf16", 128, 128, None),
    ]
    return [
        FuzzCase(-1 - i, seed + i, dt, 8, 4, 300, 300, D, R, 1, bias, True, (), False, True)
        for i, (dt, D, R, bias) in enumerate(specs)
    ]


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi + 0.999)) - 0.499)))


def draw_cases(
    n: int,
    seed: int = 0,
    *,
    max_len: int = 600,
    max_elements: int = 1 << 22,
    dtypes: tuple[str, ...] = ("bf16", "fp16", "fp32", "tf32"),
    max_head_dim: int = 128,
    max_rank: int = 128,
) -> list[FuzzCase]:
    """``n`` cases from one seed. ``max_elements`` bounds B * H * Lq * Lk (the oracle's logits)."""
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        Lq, Lk = (_log_uniform(rng, 1, max_len) if rng.random() < 0.5 else rng.randint(1, max_len) for _ in "qk")
        H = _log_uniform(rng, 1, 16)
        B = _log_uniform(rng, 1, 64)
        while B * H * Lq * Lk > max_elements and B > 1:
            B //= 2
        while B * H * Lq * Lk > max_elements and H > 1:
            H //= 2
        D = rng.randint(8, max_head_dim)
        R = 0 if rng.random() < 0.4 else _log_uniform(rng, 1, max_rank)
        bias = None if rng.random() < 0.3 else rng.choice(BIAS_PATTERNS)
        mask = rng.random() < 0.5
        full = tuple(sorted(rng.sample(range(B), k=min(B, rng.randint(1, 2))))) if mask and rng.random() < 0.3 else ()
        cases.append(
            FuzzCase(
                i,
                rng.randrange(2**31),
                rng.choice(dtypes),
                B,
                H,
                Lq,
                Lk,
                D,
                R,
                rng.choice((1, B)) if R else 1,
                bias,
                mask,
                full,
                rng.random() < 0.3,
                rng.random() < 0.6,
            )
        )
    return cases


def make_case_inputs(case: FuzzCase, device) -> tuple[tuple, dict]:
    """Fresh random operands of a case (unit scale; factors scaled so their product is too)."""
    g = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]

    def rnd(*shape, std=1.0):
        t = (torch.randn(*shape, generator=g, dtype=torch.float64) * std).to(dtype).to(device)
        return t.requires_grad_(case.grad)

    args = (
        rnd(case.B, case.H, case.Lq, case.D),
        rnd(case.B, case.H, case.Lk, case.D),
        rnd(case.B, case.H, case.Lk, case.D),
    )
    kw = {}
    if case.R:
        kw["q_factors"] = rnd(case.factor_batch, case.H, case.Lq, case.R, std=case.R**-0.25)
        kw["k_factors"] = rnd(case.factor_batch, case.H, case.Lk, case.R, std=case.R**-0.25)
    if case.bias:
        bias_shape = case.bias_shape()
        assert bias_shape is not None  # case.bias is set
        kw["bias"] = rnd(*bias_shape)
    mask_shape = case.mask_shape()
    if mask_shape is not None:
        keep = torch.rand(*mask_shape, generator=g) > 0.3
        if mask_shape[1] > 1:
            keep[:, 0] = True  # a mask broadcast along the keys masks a whole row or none of it
        keep[list(case.fully_masked_rows)] = False
        kw["key_mask"] = keep.to(device)
    if case.gate:
        kw["gate"] = rnd(case.B, case.H, case.Lq, case.D)
    return args, kw


def float64_oracle(
    q,
    k,
    v,
    q_factors=None,
    k_factors=None,
    bias=None,
    key_mask=None,
    gate=None,
    scale=None,
    compute_dtype=torch.float64,
    mask_dtype=torch.float32,
):
    """The op's formula, fully materialised in ``compute_dtype`` (float64), with the key mask
    (bool, broadcastable to [B, Lk]) added in ``mask_dtype``: fp32 as the hosts add it, so a fully
    masked row's logits all round to -1e9; ``mask_dtype=compute_dtype`` adds it exactly."""
    up = lambda t: None if t is None else t.to(compute_dtype)  # noqa: E731
    q, k, v, qf, kf, bias, gate = map(up, (q, k, v, q_factors, k_factors, bias, gate))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    if qf is not None:
        logits = logits + torch.einsum("bhir,bhjr->bhij", qf, kf)
    if bias is not None:
        logits = logits + bias
    if key_mask is not None:
        m = key_mask.reshape((1,) * (2 - key_mask.dim()) + tuple(key_mask.shape))[:, None, None, :]
        exact = logits + MASK_NEG * (m.to(compute_dtype) - 1.0)
        if mask_dtype == compute_dtype:
            logits = exact
        else:  # rounded in mask_dtype; the gradient is the identity, as in the hosts' autograd
            rounded = (logits.detach().to(mask_dtype) - MASK_NEG).to(compute_dtype)
            logits = torch.where(m, logits, logits + (rounded - logits.detach()))
    out = torch.einsum("bhij,bhjd->bhid", torch.softmax(logits, dim=-1), v)
    return out if gate is None else torch.sigmoid(gate) * out


def logit_error_scale(case: FuzzCase) -> float:
    """How many units of roundoff a logit's error spans. 16-bit inputs are exact in the kernels'
    products (fp32 accumulation), so only P, dS and the output are rounded: 1. TF32 rounds the
    fp32 inputs of each product to 11 bits, so a logit (D products of unit-scale q, k times
    D^-1/2, plus R of the factors times R^-1/2) is off by about u (sqrt(D) + sqrt(R)), and the
    softmax passes that absolute error on to the output."""
    return math.sqrt(case.D) + math.sqrt(case.R) if case.dtype == "tf32" else 1.0


def _error(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    """Relative norm-wise error; absolute (RMS over ``scale``) where ``b`` is zero up to float64
    rounding."""
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return math.inf
    rms_b = b.norm().item() / math.sqrt(b.numel())
    if rms_b <= 1e-12 * scale:
        return a.norm().item() / math.sqrt(a.numel()) / scale
    return ((a - b).norm() / b.norm()).item()


def _compiled_kernels() -> int:
    from ..kernel import triton_launch as launch

    kernels = (launch._fwd_kernel, launch._bwd_delta_kernel, launch._bwd_kernel, launch._ds_sum_kernel)
    return sum(len(c[0]) for k in kernels for c in getattr(k, "device_caches", {}).values())


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def run_case(case: FuzzCase, device, backend: Backend = "auto") -> dict:
    """One case: the op's first call (forward, and backward when the case takes gradients)
    timed with whatever it compiles, then every output compared with the oracle."""
    from ..kernel import flash_bias_attention

    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = case.dtype == "tf32"
    try:
        args, kw = make_case_inputs(case, device)
        inputs = [*args, *[t for n, t in kw.items() if n != "key_mask"]]
        names = ["q", "k", "v", *[n for n in kw if n != "key_mask"]]
        g = torch.Generator().manual_seed(case.seed + 1)
        cot = torch.randn(case.B, case.H, case.Lq, case.D, generator=g, dtype=torch.float64)
        compiled = _compiled_kernels()
        _sync(device)
        t0 = time.perf_counter()
        out = flash_bias_attention(*args, **kw, backend=backend)
        grads = torch.autograd.grad(out, inputs, cot.to(out), allow_unused=True) if case.grad else ()
        _sync(device)
        first_call_s = time.perf_counter() - t0
        compiled = _compiled_kernels() - compiled

        ref_in = [t.detach().double().requires_grad_(case.grad) for t in inputs]
        ref_kw: dict[str, torch.Tensor | None] = dict(zip(names[3:], ref_in[3:]))
        ref_kw["key_mask"] = kw.get("key_mask")  # (names has no key_mask)
        ref = float64_oracle(*ref_in[:3], **ref_kw)
        scale = math.sqrt(case.D * case.B * case.H * case.Lq)
        errors = {"out": _error(out, ref, 1.0)}
        if case.grad:
            ref_grads = torch.autograd.grad(ref, ref_in, cot.to(ref), allow_unused=True)
            for n, a, b in zip(names, grads, ref_grads):
                errors["d" + n] = math.inf if a is None or a.shape != b.shape else _error(a, b, scale)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
    u = UNIT_ROUNDOFF[case.dtype] * logit_error_scale(case)
    tol = {n: (FWD_ULPS if n == "out" else BWD_ULPS) * u for n in errors}
    failed = sorted(n for n, e in errors.items() if not e <= tol[n])
    return {
        **asdict(case),
        "case": case.describe(),
        "first_call_s": round(first_call_s, 4),
        "kernels_compiled": compiled,
        "errors": errors,
        "tolerance": tol,
        "status": "ok" if not failed else "fail: " + ", ".join(failed),
    }


def _worker(cases: list[FuzzCase], device: str, backend: Backend, path: str, cache_dir: str | None) -> None:
    if cache_dir:  # a cold kernel cache: every first call pays its compilation, as on a fresh machine
        os.environ["TRITON_CACHE_DIR"] = cache_dir
    if torch.device(device).type == "cuda" and torch.device(device).index is not None:
        torch.cuda.set_device(torch.device(device))
    with open(path, "a") as f:
        for case in cases:
            try:
                rec = run_case(case, device, backend)
            except Exception as e:  # recorded, the run goes on
                rec = {**asdict(case), "case": case.describe(), "status": f"error: {type(e).__name__}: {e}"[:500]}
            f.write(json.dumps(rec) + "\n")
            f.flush()


def run_fuzz(
    cases: list[FuzzCase],
    device: str = "cuda",
    *,
    workers: int = 1,
    backend: Backend = "auto",
    cold_cache: bool = True,
    timeout_s: float | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run ``cases`` in ``workers`` processes (each with its own cold Triton cache when
    ``cold_cache``), case i in worker i % workers; one record per case, in case order. A case
    whose worker has not answered within ``timeout_s`` is recorded as ``did not return``."""
    from tqdm import tqdm

    with tempfile.TemporaryDirectory(prefix="fb_fuzz_") as tmp:
        paths = [os.path.join(tmp, f"w{w}.jsonl") for w in range(workers)]
        slices = [cases[w::workers] for w in range(workers)]
        ctx = mp.get_context("spawn")
        procs = [
            ctx.Process(
                target=_worker, args=(s, device, backend, p, os.path.join(tmp, f"cache{w}") if cold_cache else None)
            )
            for w, (s, p) in enumerate(zip(slices, paths))
        ]
        for p in procs:
            p.start()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        bar = tqdm(total=len(cases), desc="fuzz", disable=not progress)
        done = 0
        while any(p.is_alive() for p in procs) and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.5)
            now = sum(_count_lines(p) for p in paths)
            bar.update(now - done)
            done = now
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        bar.update(sum(_count_lines(p) for p in paths) - done)
        bar.close()
        by_index = {}
        for path in paths:
            if os.path.exists(path):
                for line in open(path):
                    rec = json.loads(line)
                    by_index[rec["index"]] = rec
    return [by_index.get(c.index) or {**asdict(c), "case": c.describe(), "status": "did not return"} for c in cases]


def _count_lines(path: str) -> int:
    return sum(1 for _ in open(path)) if os.path.exists(path) else 0


def summarize(records: list[dict]) -> dict:
    """The run's headline: cases, failures, worst error per dtype, first-call times."""
    firsts = [r["first_call_s"] for r in records if "first_call_s" in r]
    worst: dict[str, dict] = {}  # dtype -> {forward, gradient, tolerance_forward, tolerance_gradient}
    for r in records:
        for name, err in r.get("errors", {}).items():
            kind = "forward" if name == "out" else "gradient"
            w = worst.setdefault(r["dtype"], {})
            w[kind] = max(w.get(kind, 0.0), err)
            # the loosest tolerance of the dtype's cases (tf32's grows with D and R)
            w["tolerance_" + kind] = max(w.get("tolerance_" + kind, 0.0), r["tolerance"][name])
    return {
        "cases": len(records),
        "failures": sum(r["status"] != "ok" for r in records),
        "worst_error": worst,
        "first_call_s_max": max(firsts) if firsts else None,
        "first_call_s_median": statistics.median(firsts) if firsts else None,
        "first_call_s_median_compiling": statistics.median(
            [r["first_call_s"] for r in records if r.get("kernels_compiled")] or [0.0]
        ),
    }


def write_results(records: list[dict], output_dir: str | Path, environment: dict, config: dict) -> dict:
    """results.json ({environment, config, summary, records}) and results.md, written atomically."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)
    doc = {**summary, "environment": environment, "config": config, "records": records}
    atomic_write(out / "results.json", json.dumps(doc, indent=1, default=str))
    lines = [
        f"# FlashBias op fuzz: {summary['cases']} cases, {summary['failures']} failures",
        "",
        f"{environment.get('device')} · torch {environment.get('torch')} · triton {environment.get('triton')}"
        f" · {environment.get('date')}",
        "",
        f"`{environment.get('command')}`",
        "",
        f"First call (compilation included): max {summary['first_call_s_max']:.2f} s, median "
        f"{summary['first_call_s_median']:.2f} s (median over the calls that compiled: "
        f"{summary['first_call_s_median_compiling']:.2f} s)"
        if summary["first_call_s_max"] is not None
        else "",
        "",
        "| dtype | worst forward error (tolerance) | worst gradient error (tolerance) |",
        "|---|---|---|",
    ]
    for dt, w in sorted(summary["worst_error"].items()):
        cells = [f"{w[k]:.2e} ({w['tolerance_' + k]:.1e})" if k in w else "—" for k in ("forward", "gradient")]
        lines.append(f"| {dt} | {cells[0]} | {cells[1]} |")
    bad = [r for r in records if r["status"] != "ok"]
    if bad:
        lines += ["", "## Failures", ""] + [f"- #{r['index']} {r['case']}: {r['status']}" for r in bad]
    slow = sorted((r for r in records if "first_call_s" in r), key=lambda r: -r["first_call_s"])[:10]
    lines += ["", "## Slowest first calls", "", "| case | s | kernels compiled |", "|---|---|---|"]
    lines += [f"| {r['case']} | {r['first_call_s']:.2f} | {r['kernels_compiled']} |" for r in slow]
    atomic_write(out / "results.md", "\n".join(lines) + "\n")
    return summary


__all__ = [
    "FuzzCase",
    "draw_cases",
    "named_cases",
    "float64_oracle",
    "run_case",
    "run_fuzz",
    "summarize",
    "write_results",
]
