"""Tile sweep for the FlashBias Triton kernels (device only).

For each problem (head dim, rank, dense bias or not) it picks the best forward tiles, then the
best backward tiles (timed on the full forward+backward), after checking every candidate against
the default tiles' result. Writes the winners as JSON for ``load_config_overrides`` and a log of every timing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..cli import atomic_write, check_results_not_replaced
from ..kernel import flash_bias_attention
from ..kernel import tiles as tfb
from .timing import median_ms

# (block_m, block_n, num_warps, num_stages, rows per program[, ds_sum row splits])
CANDIDATES = {
    "fwd": [
        (64, 64, 4, 3, 1),
        (64, 64, 4, 3, 2),
        (64, 128, 4, 3, 1),
        (64, 128, 4, 3, 2),
        (128, 64, 8, 3, 1),
        (64, 32, 4, 3, 2),
        (128, 64, 4, 3, 1),
    ],
    "bwd": [
        (64, 64, 4, 3, 1),
        (64, 128, 4, 3, 1),
        (64, 64, 4, 3, 2),
        (64, 64, 4, 2, 1),
        (128, 64, 8, 2, 1),
        (64, 128, 8, 3, 1),
        (32, 128, 4, 3, 1),
    ],
    "ds_sum": [
        (64, 64, 4, 3, 1, 1),
        (64, 64, 4, 3, 1, 2),
        (64, 64, 4, 3, 1, 4),
        (64, 64, 4, 3, 1, 8),
        (128, 64, 4, 3, 1, 4),
        (128, 64, 8, 3, 1, 4),
        (128, 128, 8, 3, 1, 4),
        (64, 128, 4, 3, 1, 4),
        (128, 64, 4, 3, 1, 1),
    ],
}


@dataclass
class Problem:
    name: str
    batch: int
    heads: int
    n: int
    head_dim: int
    rank: int  # 0: no factors
    dense_bias: bool


def _inputs(p: Problem, device, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).to(device=device, dtype=dtype).requires_grad_(True)

    q, k, v = (rnd(p.batch, p.heads, p.n, p.head_dim) for _ in range(3))
    kw = {}
    if p.rank:
        kw["q_factors"] = rnd(1, p.heads, p.n, p.rank, std=p.rank**-0.25)
        kw["k_factors"] = rnd(1, p.heads, p.n, p.rank, std=p.rank**-0.25)
    if p.dense_bias:
        kw["bias"] = rnd(1, p.heads, p.n, p.n)
    return (q, k, v), kw


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def tune(problems: list[Problem], device, dtype, warmup_ms=10, rep_ms=50) -> tuple[list[dict], list[dict]]:
    winners, log = [], []
    for p in problems:
        args, kw = _inputs(p, device, dtype)
        ins = [*args, *kw.values()]
        do = torch.randn_like(args[0])
        block_d = tfb._pow2_at_least_16(p.head_dim)
        block_r = tfb._pow2_at_least_16(p.rank) if p.rank else 0
        keys = {
            kind: tfb.config_key(kind, block_d, block_r, p.dense_bias, args[0].element_size()) for kind in CANDIDATES
        }
        for key in keys.values():
            tfb.CONFIG_OVERRIDES.pop(key, None)

        def fwd():
            return flash_bias_attention(*args, **kw)

        def fwd_bwd():
            return torch.autograd.grad(fwd(), ins, do)

        with torch.no_grad():
            ref_out = fwd()
        ref_grads = fwd_bwd()
        for kind, cands in CANDIDATES.items():
            if kind == "ds_sum" and not (p.rank or p.dense_bias):
                continue  # the kernel does not run for this problem
            best = None
            for cand in tqdm(cands, desc=f"{p.name} {kind}", leave=False):
                tfb.CONFIG_OVERRIDES[keys[kind]] = tfb.KernelConfig(*cand)
                entry = {"problem": p.name, "kind": kind, "config": cand}
                try:
                    if kind == "fwd":
                        with torch.no_grad():
                            err = _rel(fwd(), ref_out)
                            ms = median_ms(fwd, device, warmup_ms, rep_ms)
                    else:
                        err = max(_rel(a, b) for a, b in zip(fwd_bwd(), ref_grads))
                        ms = median_ms(fwd_bwd, device, warmup_ms, rep_ms)
                    entry.update(ms=ms, rel_err=err, ok=err < 2e-2)
                except Exception as e:  # a tile shape the compiler rejects (e.g. shared memory)
                    entry.update(ms=None, ok=False, error=f"{type(e).__name__}: {str(e)[:160]}")
                log.append(entry)
                if entry["ok"] and (best is None or entry["ms"] < best["ms"]):
                    best = entry
            if best is None:
                tfb.CONFIG_OVERRIDES.pop(keys[kind], None)
                continue
            tfb.CONFIG_OVERRIDES[keys[kind]] = tfb.KernelConfig(*best["config"])
            bm, bn, w, s, rows, *split = best["config"]
            winners.append(
                {
                    "kind": kind,
                    "block_d": block_d,
                    "block_r": block_r,
                    "has_bias": p.dense_bias,
                    "elem_bytes": args[0].element_size(),
                    "block_m": bm,
                    "block_n": bn,
                    "num_warps": w,
                    "num_stages": s,
                    "rows": rows,
                    "splits": split[0] if split else 1,
                    "problem": asdict(p),
                    "ms": best["ms"],
                }
            )
            print(f"{p.name:>24} {kind:>9}: best {best['config']} {best['ms']:.3f} ms", flush=True)
    return winners, log


def run(cfg) -> None:
    out = Path(cfg.output_dir)
    check_results_not_replaced(cfg, ("tuned_configs.json",))
    if not torch.cuda.is_available():
        raise ValueError("tune_kernels times the kernels on a GPU: no CUDA device here")
    if cfg.dtype not in ("bf16", "fp16"):
        raise ValueError(f"dtype must be bf16 or fp16, got {cfg.dtype!r}")
    device = torch.device("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.dtype]
    problems = []
    for i, p in enumerate(cfg.problems):
        try:
            problems.append(Problem(**p))
        except TypeError as e:
            raise ValueError(
                f"problems[{i}] = {dict(p)}: {e} (keys: {', '.join(Problem.__dataclass_fields__)})"
            ) from None
    winners, log = tune(problems, device, dtype, cfg.warmup_ms, cfg.rep_ms)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "tuned_configs.json", json.dumps(winners, indent=1))
    atomic_write(out / "tune_log.json", json.dumps(log, indent=1))
