"""Attention-op benchmark: the FlashBias op against the baselines (SDPA without bias = the floor,
FlexAttention with a bias score_mod, SDPA with the bias as attn_mask, cuEquivariance and trifast
when installed), forward and forward+backward, with peak memory. Results go to JSON and a
markdown table with the environment they were measured in."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..cli import atomic_write, check_names, check_settings, positive_int, positive_ints
from ..kernel import flash_bias_attention
from .timing import (
    Skipped,
    environment,
    failure_status,
    median_ms,
    median_ms_and_peak_memory,
    resolve_device,
    resolve_dtype,
)


@dataclass
class Case:
    kind: str  # "triangle" (B = N rows), "single" (B = 1) or "diffusion" (B = samples); bias [1, H, N, N] shared by B
    n: int
    batch: int
    heads: int
    head_dim: int


@dataclass
class Record:
    kind: str
    n: int
    batch: int
    heads: int
    head_dim: int
    method: str
    rank: int | None
    fwd_ms: float | None = None
    fwd_bwd_ms: float | None = None
    peak_memory_bytes: int | None = None
    status: str = "ok"
    notes: dict = field(default_factory=dict)


def _inputs(case: Case, dtype, device, rank: int, seed: int):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).to(device=device, dtype=dtype)

    B, H, N, D = case.batch, case.heads, case.n, case.head_dim
    q, k, v = rnd(B, H, N, D), rnd(B, H, N, D), rnd(B, H, N, D)
    bias = rnd(1, H, N, N)
    qf = rnd(1, H, N, max(rank, 1), std=max(rank, 1) ** -0.25)
    kf = rnd(1, H, N, max(rank, 1), std=max(rank, 1) ** -0.25)
    return q, k, v, bias, qf, kf


def _method(name: str, q, k, v, bias, qf, kf) -> tuple[Callable[[], torch.Tensor], list[torch.Tensor]]:
    """A closure computing the attention output, and the tensors that get gradients."""
    if name == "sdpa_floor":
        return (lambda: F.scaled_dot_product_attention(q, k, v)), [q, k, v]
    if name == "sdpa_bias_mask":
        return (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias)), [q, k, v, bias]
    if name == "fb_bias":
        return (lambda: flash_bias_attention(q, k, v, bias=bias)), [q, k, v, bias]
    if name == "fb_factors":
        return (lambda: flash_bias_attention(q, k, v, q_factors=qf, k_factors=kf)), [q, k, v, qf, kf]
    if name == "flex_bias":
        if q.device.type != "cuda":
            raise Skipped("FlexAttention is benchmarked on CUDA only")
        from torch.nn.attention.flex_attention import flex_attention

        flex = _compiled_flex(flex_attention)

        def score_mod(score, b, h, q_idx, kv_idx):
            # index the bias itself (not a view taken before requires_grad is set), so that
            # its gradient flows in the fwd+bwd timing
            return score + bias[0, h, q_idx, kv_idx]

        return (lambda: flex(q, k, v, score_mod=score_mod)), [q, k, v, bias]
    if name == "cueq":
        from cuequivariance_torch import triangle_attention  # noqa: PLC0415

        # cuEquivariance: q/k/v [B, N, H, S, D] (here one batch of N rows), bias [B, 1, H, S, S];
        # the views are taken per call (after requires_grad is set, for the fwd+bwd timing) and
        # the output comes back in q's shape
        mask = torch.ones(1, q.shape[0], 1, 1, k.shape[2], dtype=torch.bool, device=q.device)

        def cueq():
            out = triangle_attention(q[None], k[None], v[None], bias[None], mask)
            return (out[0] if isinstance(out, tuple) else out)[0]

        return cueq, [q, k, v, bias]
    if name == "trifast":
        from trifast import triangle_attention  # noqa: PLC0415

        # trifast: q/k/v [B, H, N, N, D], bias [B, H, N, N], mask [B, N, N] (True = masked)
        mask = torch.zeros(1, q.shape[0], k.shape[2], dtype=torch.bool, device=q.device)

        def trifast():
            five = [t[None].transpose(1, 2) for t in (q, k, v)]
            return triangle_attention(*five, bias, mask)[0].transpose(0, 1)

        return trifast, [q, k, v, bias]
    raise ValueError(f"unknown benchmark method {name!r}")


_FLEX = None


def _compiled_flex(flex_attention):
    global _FLEX
    if _FLEX is None:
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


def _measure(case: Case, method: str, rank: int | None, cfg, dtype, device) -> Record:
    rec = Record(case.kind, case.n, case.batch, case.heads, case.head_dim, method, rank)
    graphs = bool(cfg.get("cuda_graphs", False))
    try:
        q, k, v, bias, qf, kf = _inputs(case, dtype, device, rank or 1, cfg.seed)
        fn, grad_inputs = _method(method, q, k, v, bias, qf, kf)
        with torch.no_grad():
            rec.fwd_ms = median_ms(fn, device, cfg.warmup_ms, cfg.rep_ms, graphs)
            if method in ("flex_bias", "sdpa_bias_mask", "cueq", "trifast"):
                # the same function as the dense-bias op: relative difference of the outputs
                ref = flash_bias_attention(q, k, v, bias=bias).float()
                rec.notes["rel_diff_vs_fb_bias"] = float((fn().float() - ref).norm() / ref.norm())
        if cfg.backward:
            for t in grad_inputs:
                t.requires_grad_(True)
            do = torch.randn_like(q)

            def fwd_bwd():
                return torch.autograd.grad(fn(), grad_inputs, do)

            rec.fwd_bwd_ms, rec.peak_memory_bytes = median_ms_and_peak_memory(
                fwd_bwd, device, cfg.warmup_ms, cfg.rep_ms, graphs
            )
    except Exception as e:  # a baseline failing must not stop the benchmark: record why
        rec.status = failure_status(e)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rec


METHODS = ("sdpa_floor", "sdpa_bias_mask", "fb_bias", "fb_factors", "flex_bias", "cueq", "trifast")


def cases(cfg) -> list[Case]:
    """The shapes of ``triangle`` (B = N rows), ``single`` (B = 1) and ``diffusion`` (B =
    ``samples``, optional), each checked: a ValueError names the first bad setting."""
    out = []
    for kind in ("triangle", "single", "diffusion"):
        section = cfg.get(kind)
        if section is None and kind == "diffusion":
            continue
        sizes = positive_ints(section.get("sizes") if section is not None else None, f"{kind}.sizes")
        heads = positive_int(section.get("heads"), f"{kind}.heads")
        head_dim = positive_int(section.get("head_dim"), f"{kind}.head_dim")
        samples = positive_int(section.get("samples"), f"{kind}.samples") if kind == "diffusion" else 1
        for n in sizes:
            out.append(Case(kind, n, n if kind == "triangle" else samples, heads, head_dim))
    check_names(cfg.methods, "methods", METHODS)
    for r in cfg.ranks:
        positive_int(r, f"ranks: every rank ({list(cfg.ranks)})")
    resolve_dtype(cfg.dtype, torch.device("cpu"))  # a bad name raises now
    check_settings(cfg, [("cuda_graphs", "bool", None)])
    return out


def run(cfg) -> list[Record]:
    shapes = cases(cfg)  # checked before any work
    if cfg.get("kernel_configs"):
        from ..kernel.tiles import load_config_overrides

        try:
            load_config_overrides(cfg.kernel_configs)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"kernel_configs={cfg.kernel_configs}: {e}") from None
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.get("cuda_graphs", False) and device.type != "cuda":
        raise ValueError(f"cuda_graphs=true times CUDA graph replays and needs a CUDA device, got device={device}")
    jobs = [(c, m, r) for c in shapes for m in cfg.methods for r in (cfg.ranks if m == "fb_factors" else [None])]
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device) | {"dtype": str(dtype).replace("torch.", "")}
    if cfg.get("cuda_graphs", False):
        env["timing"] = "CUDA graph replays (triton.testing.do_bench_cudagraph): no host time, no L2 flush"
    records = []
    for case, method, rank in tqdm(jobs, desc="attention benchmark", unit="case"):
        records.append(_measure(case, method, rank, cfg, dtype, device))
        # written after every case, so an interrupted run still leaves its results
        atomic_write(
            out / "results.json", json.dumps({"environment": env, "records": [asdict(r) for r in records]}, indent=1)
        )
        atomic_write(out / "results.md", markdown_table(records, env))
    return records


def _fmt(x):
    return "—" if x is None else f"{x:.2f}"


def markdown_table(records: list[Record], env: dict) -> str:
    lines = [
        "# Attention benchmark",
        "",
        " · ".join(f"{k}: {v}" for k, v in env.items()),
        "",
        "Times in ms (median); ×floor = fwd+bwd over SDPA without bias at the same size.",
        "",
        "| kind | N | B×H×D | method | rank | fwd ms | fwd+bwd ms | ×floor fwd | ×floor fwd+bwd | peak GiB | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    floors = {(r.kind, r.n): r for r in records if r.method == "sdpa_floor" and r.status == "ok"}
    for r in records:
        f = floors.get((r.kind, r.n))
        rf = (r.fwd_ms / f.fwd_ms) if (f and r.fwd_ms and f.fwd_ms) else None
        rb = (r.fwd_bwd_ms / f.fwd_bwd_ms) if (f and r.fwd_bwd_ms and f.fwd_bwd_ms) else None
        mem = r.peak_memory_bytes / 2**30 if r.peak_memory_bytes else None
        lines.append(
            f"| {r.kind} | {r.n} | {r.batch}×{r.heads}×{r.head_dim} | {r.method} | {r.rank or ''} | "
            f"{_fmt(r.fwd_ms)} | {_fmt(r.fwd_bwd_ms)} | {_fmt(rf)} | {_fmt(rb)} | {_fmt(mem)} | {r.status} |"
        )
    return "\n".join(lines) + "\n"
