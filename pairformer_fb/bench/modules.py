"""Module benchmark: the FlashBias triangle attention and pair-biased single attention modules
(layer norm and projections included), exact and lowrank, against an unfused torch module
with the same weights (SDPA with the bias and mask as attn_mask, as hosts run without custom
kernels). Optional torch.profiler breakdown of one module call, to see where time goes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..cli import Setting, atomic_write, check_divisible, check_names, check_settings, positive_ints
from ..modules import FactorConfig, FlashBiasAttentionPairBias, FlashBiasTriangleAttention
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
class ModuleRecord:
    module: str  # "triangle_starting", "triangle_ending", "single"
    n: int
    variant: str  # "exact", "lowrank", "torch_sdpa"
    rank: int | None
    fwd_ms: float | None = None
    fwd_bwd_ms: float | None = None
    peak_memory_bytes: int | None = None
    status: str = "ok"
    notes: dict = field(default_factory=dict)


def sdpa_triangle_starting(mod: FlashBiasTriangleAttention, z, mask):
    """The starting-node module written as hosts do without kernels: bias [1, H, N, N] plus the
    mask term as SDPA's attn_mask (materialised per row: [N, H, N, N])."""
    x = mod.layer_norm(z[0])
    n, H, D = x.shape[0], mod.n_heads, mod.head_dim

    def heads(t):  # [N, N, H*D] -> [N rows, H, N, D]
        return t.view(n, n, H, D).transpose(1, 2)

    q, k, v = heads(mod.linear_q(x)), heads(mod.linear_k(x)), heads(mod.linear_v(x))
    bias = mod.linear_b(x).permute(2, 0, 1)[None]  # [1, H, N, N]
    attn_mask = bias + (1e9 * (mask[0].to(x.dtype) - 1))[:, None, None, :]
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    o = o.transpose(1, 2).reshape(n, n, H * D)
    return mod.linear_o(torch.sigmoid(mod.linear_g(x)) * o)[None]


def sdpa_single(mod: FlashBiasAttentionPairBias, s, z, mask):
    assert mod.layer_norm_s is not None  # _build makes it with layer_norm_s=True (the default)
    a = mod.layer_norm_s(s[0])
    x = mod.layer_norm_z(z[0])
    n, H, D = a.shape[0], mod.n_heads, mod.head_dim

    def heads(t):  # [N, H*D] -> [1, H, N, D]
        return t.view(1, n, H, D).transpose(1, 2)

    q, k, v = heads(mod.linear_q(a)), heads(mod.linear_k(a)), heads(mod.linear_v(a))
    attn_mask = mod.linear_z(x).permute(2, 0, 1)[None] + (1e9 * (mask[0].to(x.dtype) - 1))[None, None, None, :]
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).reshape(n, H * D)
    return mod.linear_o(torch.sigmoid(mod.linear_g(a)) * o)[None]


def _build(module: str, n: int, variant: str, rank: int | None, cfg, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    fc = None
    if variant == "lowrank":
        if rank is None:
            raise ValueError("variant 'lowrank' needs a rank: set rank in the benchmark config")
        fc = FactorConfig(rank=rank, width=cfg.factor_width)
    mask = torch.ones(1, n, dtype=torch.bool)
    mask[:, n - max(1, n // 20) :] = False  # padded tokens, as in a batch of mixed lengths
    mod: FlashBiasTriangleAttention | FlashBiasAttentionPairBias
    if module.startswith("triangle"):
        kw: dict[str, Any] = (
            dict(node="starting") if module == "triangle_starting" else dict(node="ending", ending_bias="transposed")
        )
        mod = FlashBiasTriangleAttention(
            cfg.triangle.c_z, cfg.triangle.heads, cfg.triangle.head_dim, factor_config=fc, **kw
        )
        inputs = [torch.randn(1, n, n, cfg.triangle.c_z, generator=g)]
        pair_mask = mask[:, :, None] & mask[:, None, :]
        masks = [pair_mask]
    else:
        mod = FlashBiasAttentionPairBias(cfg.single.c_s, cfg.single.c_z, cfg.single.heads, factor_config=fc)
        inputs = [torch.randn(1, n, cfg.single.c_s, generator=g), torch.randn(1, n, n, cfg.single.c_z, generator=g)]
        masks = [mask]
    with torch.no_grad():  # hosts zero-init the output projection; random weights time the real work
        for p in mod.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    mod = mod.to(device=device, dtype=dtype)
    if variant == "lowrank":
        mod.mode = "lowrank"
    inputs = [t.to(device=device, dtype=dtype) for t in inputs]
    masks = [m.to(device) for m in masks]
    if variant == "torch_sdpa":
        if module == "triangle_starting":
            assert isinstance(mod, FlashBiasTriangleAttention)  # built above for "triangle_*"
            return (lambda: sdpa_triangle_starting(mod, *inputs, *masks)), mod, inputs
        if module == "single":
            assert isinstance(mod, FlashBiasAttentionPairBias)  # built above for "single"
            return (lambda: sdpa_single(mod, *inputs, *masks)), mod, inputs
        raise Skipped("the torch baseline is written for the starting node and the single module")
    return (lambda: mod(*inputs, *masks)), mod, inputs


def _measure(module, n, variant, rank, cfg, dtype, device) -> ModuleRecord:
    rec = ModuleRecord(module, n, variant, rank)
    try:
        fn, mod, inputs = _build(module, n, variant, rank, cfg, dtype, device)
        with torch.inference_mode():
            rec.fwd_ms = median_ms(fn, device, cfg.warmup_ms, cfg.rep_ms)
        if cfg.backward and n <= cfg.backward_max_n:
            params = [p for p in mod.parameters() if p.requires_grad]
            for t in inputs:
                t.requires_grad_(True)

            def fwd_bwd():
                out = fn()
                return torch.autograd.grad(out, inputs + params, torch.ones_like(out), allow_unused=True)

            rec.fwd_bwd_ms, rec.peak_memory_bytes = median_ms_and_peak_memory(
                fwd_bwd, device, cfg.warmup_ms, cfg.rep_ms
            )
    except Exception as e:  # keep going: record why this variant failed
        rec.status = failure_status(e)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rec


def profile(module: str, n: int, variant: str, rank, cfg, dtype, device, path: Path) -> None:
    """Top kernels of one inference call, as a text table (CUDA time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn, _, _ = _build(module, n, variant, rank, cfg, dtype, device)
    with torch.inference_mode():
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    atomic_write(path, prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))


MODULES = ("triangle_starting", "triangle_ending", "single")
VARIANTS = ("exact", "lowrank", "torch_sdpa")
# checked before any work: (dotted key, kind, least value)
SETTINGS: tuple[Setting, ...] = (
    ("rank", "int", 1),
    ("factor_width", "int", 1),
    *((f"triangle.{k}", "int", 1) for k in ("c_z", "heads", "head_dim")),
    *((f"single.{k}", "int", 1) for k in ("c_s", "c_z", "heads")),
    ("backward", "bool", None),
    ("backward_max_n", "int", 1),
    ("profile", "bool", None),
    ("profile_n", "int", 1),
)


def run(cfg) -> list[ModuleRecord]:
    modules = check_names(cfg.modules, "modules", MODULES)
    check_names(cfg.variants, "variants", VARIANTS)
    check_settings(cfg, SETTINGS)
    check_divisible(cfg, "single.c_s", "single.heads")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    sizes = {kind: positive_ints(cfg[kind].sizes, f"{kind}.sizes") for kind in ("triangle", "single")}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device) | {"dtype": str(dtype).replace("torch.", "")}
    jobs = [
        (m, n, v, (cfg.rank if v == "lowrank" else None))
        for m in modules
        for n in sizes["triangle" if m.startswith("triangle") else "single"]
        for v in cfg.variants
    ]
    records = []
    for module, n, variant, rank in tqdm(jobs, desc="module benchmark", unit="case"):
        records.append(_measure(module, n, variant, rank, cfg, dtype, device))
        atomic_write(
            out / "results.json", json.dumps({"environment": env, "records": [asdict(r) for r in records]}, indent=1)
        )
        atomic_write(out / "results.md", markdown_table(records, env))
    if cfg.profile and device.type == "cuda":
        for variant in ("exact", "lowrank"):
            profile(
                "triangle_starting",
                cfg.profile_n,
                variant,
                cfg.rank,
                cfg,
                dtype,
                device,
                out / f"profile_triangle_starting_{variant}_{cfg.profile_n}.txt",
            )
    return records


def markdown_table(records: list[ModuleRecord], env: dict) -> str:
    fmt = lambda x: "—" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [
        "# Module benchmark",
        "",
        " · ".join(f"{k}: {v}" for k, v in env.items()),
        "",
        "Times in ms (median), one batch element, layer norms and projections included.",
        "",
        "| module | N | variant | rank | fwd ms | fwd+bwd ms | peak GiB | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        mem = r.peak_memory_bytes / 2**30 if r.peak_memory_bytes else None
        lines.append(
            f"| {r.module} | {r.n} | {r.variant} | {r.rank or ''} | {fmt(r.fwd_ms)} | "
            f"{fmt(r.fwd_bwd_ms)} | {fmt(mem)} | {r.status} |"
        )
    return "\n".join(lines) + "\n"
