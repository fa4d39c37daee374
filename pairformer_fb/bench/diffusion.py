"""Diffusion-module attention benchmark: one call of the stock Protenix ``AttentionPairBias``
(has_s=True) against ours, i.e. the time per block per diffusion step.

Modules:

* ``diffusion``: the diffusion transformer's attention (global, 16 heads x 48, c_a 768, c_s
  384, c_z 128 in Protenix), ``n_sample`` samples per call, the pair rep shared by them;
* ``atom``: the atom transformer's local attention (cross attention, 4 heads, c_atom 128,
  c_atompair 16, query blocks of 32, key windows of 128) over N atoms.

Variants: ``stock`` (the host module, plain bias), ``stock_fusion`` (the host's
``enable_efficient_fusion`` bias, Protenix's inference default; diffusion only), ``exact``
(ours, the bias cached as across diffusion steps), ``exact_uncached`` (ours, the bias
recomputed every call), ``lowrank`` (ours, SVD factors of the bias, cached; diffusion only; the
SVD's one-off time, rank and error in the notes). Every variant of ours records its relative
error against the stock output. Parameters stay fp32; bf16 runs under ``torch.autocast`` (as
a host under AMP), fp32 runs with TF32 matmuls when ``tf32`` is set (Protenix's inference
default: its diffusion skips AMP and enables TF32).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..cli import Setting, atomic_write, check_divisible, check_names, check_settings, positive_ints
from .timing import Skipped, environment, failure_status, median_ms, resolve_device, resolve_dtype


@dataclass
class DiffusionRecord:
    module: str  # "diffusion" or "atom"
    n: int  # tokens (diffusion) or atoms (atom)
    n_sample: int
    variant: str
    ms: float | None = None  # one call = one block, one diffusion step, all samples
    rel_err: float | None = None  # against the stock module's output
    status: str = "ok"
    notes: dict = field(default_factory=dict)


def _host_module(module: str, cfg, device):
    os.environ.setdefault("LAYERNORM_TYPE", "torch")
    from protenix.model.modules.transformer import AttentionPairBias

    g = torch.Generator().manual_seed(cfg.seed)
    spec = cfg[module]
    host = AttentionPairBias(
        has_s=True, n_heads=spec.heads, c_a=spec.c_a, c_s=spec.c_s, c_z=spec.c_z, cross_attention_mode=module == "atom"
    )
    with torch.no_grad():  # hosts zero-init output projections and gates: random weights time the real work
        for name, p in host.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
    return host.to(device).eval()


def _inputs(module: str, n: int, cfg, device):
    g = torch.Generator().manual_seed(cfg.seed + 1)
    spec = cfg[module]
    a = torch.randn(cfg.n_sample, n, spec.c_a, generator=g)
    if module == "diffusion":
        s = torch.randn(cfg.n_sample, n, spec.c_s, generator=g)  # noise-level conditioning: per sample
        z = torch.randn(1, n, n, spec.c_z, generator=g)  # the conditioned pair rep: shared
        # the efficient-fusion form: normalised (no scale / offset), channels first
        zf = torch.nn.functional.layer_norm(z, (spec.c_z,)).permute(0, 3, 1, 2).contiguous()
        return {"a": a.to(device), "s": s.to(device), "z": z.to(device), "zf": zf.to(device)}
    T = math.ceil(n / spec.n_queries)
    s = torch.randn(1, n, spec.c_s, generator=g)  # atom conditioning: shared by the samples
    z = torch.randn(1, T, spec.n_queries, spec.n_keys, spec.c_z, generator=g)
    return {"a": a.to(device), "s": s.to(device), "z": z.to(device)}


def _ours(host, module: str, mode: str, cfg):
    from ..hosts.base import Site
    from ..hosts.protenix.adapter import make_replacement
    from ..modules.bias_cache import SVDConfig

    site = Site(path=module, parent=None, attr=module, module=host, kind=module, node=None, stack="diffusion", block=0)
    svd = SVDConfig(rel_error=cfg.svd.rel_error, max_rank=cfg.svd.max_rank)
    return make_replacement(site, mode=mode, factor_config=None, svd_config=svd)


def _call(fn_module, module: str, x, cfg, fusion: bool):
    if module == "diffusion":
        if fusion:
            return lambda: fn_module(x["a"], x["s"], x["zf"], enable_efficient_fusion=True)
        return lambda: fn_module(x["a"], x["s"], x["z"])
    spec = cfg.atom
    return lambda: fn_module(x["a"], x["s"], x["z"], n_queries=spec.n_queries, n_keys=spec.n_keys)


def time_variant(
    rec: DiffusionRecord, variant: str, stock_fn, build_ours, cfg, dtype, device, stock_out, *, cache_hits: bool = True
) -> None:
    """Time one variant into ``rec``: ``stock_fn`` (a closure calling the host module) for
    "stock*", else ``build_ours(mode) -> (wrapper, closure)``; "exact_uncached" clears the bias
    cache before every call, "lowrank" records its one-off SVD (first call) and ranks. Also the
    output's relative error against ``stock_out`` and, with ``cache_hits``, exact's cache hits.
    Shared by the Protenix and Boltz-2 diffusion benchmarks."""
    ours = None
    if variant.startswith("stock"):
        fn = stock_fn
    else:
        ours, call = build_ours("lowrank" if variant == "lowrank" else "exact")
        if variant == "exact_uncached":

            def fn():
                ours.flash_bias.bias_cache.clear()
                return call()
        else:
            fn = call
        if variant == "lowrank":  # the one-off SVD, at the first call (then cached)
            _sync(device)
            t0 = time.perf_counter()
            with _autocast(dtype, device):
                fn()
            _sync(device)
            svd = ours.flash_bias.last_svd
            rec.notes.update(
                first_call_ms=round((time.perf_counter() - t0) * 1e3, 3),
                rank=svd.rank,
                svd_rel_error_mean=float(svd.rel_errors.mean()),
                svd_rel_error_max=float(svd.rel_errors.max()),
            )
    with _autocast(dtype, device):
        out = fn()
        rec.ms = median_ms(fn, device, cfg.warmup_ms, cfg.rep_ms)
    if stock_out is not None and ours is not None:
        rec.rel_err = float((out.double() - stock_out.double()).norm() / stock_out.double().norm())
    if variant == "exact" and cache_hits:
        assert ours is not None  # built for every variant but "stock*"
        rec.notes["cache_hits"] = ours.flash_bias.bias_cache.hits


def _measure(module: str, n: int, variant: str, cfg, dtype, device, host, x, stock_out) -> DiffusionRecord:
    rec = DiffusionRecord(module, n, cfg.n_sample, variant)
    try:
        if variant in ("stock_fusion", "lowrank") and module != "diffusion":
            raise Skipped(f"{variant} applies to the diffusion transformer's attention only")
        fusion = module == "diffusion" and variant != "stock"

        def build_ours(mode):
            ours = _ours(host, module, mode, cfg)
            return ours, _call(ours, module, x, cfg, fusion)

        time_variant(rec, variant, _call(host, module, x, cfg, fusion), build_ours, cfg, dtype, device, stock_out)
    except Exception as e:  # keep going: record why this variant failed
        rec.status = failure_status(e)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rec


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(dtype, device):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


MODULES = ("diffusion", "atom")
VARIANTS = ("stock", "stock_fusion", "exact", "exact_uncached", "lowrank")
# the shapes, checked before any work: (dotted key, kind, least value)
SETTINGS: tuple[Setting, ...] = (
    ("n_sample", "int", 1),
    ("svd.rel_error", "number", 0),
    ("svd.max_rank", "int", 1),
    *((f"{m}.{k}", "int", 1) for m in MODULES for k in ("c_a", "c_s", "c_z", "heads")),
    ("atom.n_queries", "int", 1),
    ("atom.n_keys", "int", 1),
)


def run(cfg) -> list[DiffusionRecord]:
    check_settings(cfg, SETTINGS)
    for m in MODULES:
        check_divisible(cfg, f"{m}.c_a", f"{m}.heads")

    def setup(module, n, device):
        host = _host_module(module, cfg, device)
        x = _inputs(module, n, cfg, device)
        return host, x, _call(host, module, x, cfg, module == "diffusion")

    return run_cases(cfg, "diffusion attention benchmark", {}, setup, _measure, VARIANTS)


def run_cases(cfg, title: str, env_extra: dict, setup, measure, variants: Sequence[str]) -> list[DiffusionRecord]:
    """The loop of the diffusion-attention benchmarks (Protenix here, Boltz-2 in
    bench_boltz_diffusion): every (module, size) of ``cfg`` gets ``setup(module, n, device) ->
    (host, inputs, stock call)``, the stock output, then ``measure(module, n, variant, cfg, dtype,
    device, host, inputs, stock_out)`` per variant; results.json / results.md rewritten after
    every case, a case whose set-up fails recorded as failed for all its variants (of
    ``variants``, the names the benchmark knows)."""
    modules = check_names(cfg.modules, "modules", MODULES)
    check_names(cfg.variants, "variants", variants)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    sizes = {m: positive_ints(cfg[m].sizes, f"{m}.sizes") for m in modules}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg.tf32)
        torch.backends.cudnn.allow_tf32 = bool(cfg.tf32)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device) | env_extra | {"dtype": str(dtype).replace("torch.", ""), "tf32": bool(cfg.tf32)}
    jobs = [(m, n) for m in modules for n in sizes[m]]
    records: list[DiffusionRecord] = []
    bar = tqdm(total=len(jobs) * len(cfg.variants), desc=title, unit="case")
    for module, n in jobs:
        with torch.no_grad():
            try:
                host, x, stock_fn = setup(module, n, device)
                with _autocast(dtype, device):
                    stock_out = stock_fn()
            except Exception as e:  # noqa: BLE001
                for variant in cfg.variants:
                    records.append(DiffusionRecord(module, n, cfg.n_sample, variant, status=failure_status(e)))
                    bar.update()
                _write(out, records, env)
                continue
            for variant in cfg.variants:
                records.append(measure(module, n, variant, cfg, dtype, device, host, x, stock_out))
                bar.update()
                _write(out, records, env)
            del host, x, stock_out
    bar.close()
    return records


def _write(out: Path, records: list[DiffusionRecord], env: dict) -> None:
    atomic_write(
        out / "results.json", json.dumps({"environment": env, "records": [asdict(r) for r in records]}, indent=1)
    )
    atomic_write(out / "results.md", markdown_table(records, env))


def markdown_table(records: list[DiffusionRecord], env: dict) -> str:
    fmt = lambda x, p=3: "—" if x is None else f"{x:.{p}f}"
    lines = [
        "# Diffusion-module attention benchmark",
        "",
        " · ".join(f"{k}: {v}" for k, v in env.items()),
        "",
        "One call = one block, one diffusion step, all samples (ms, median). `exact` and `lowrank` "
        "reuse the bias / factors computed at the first step; rel. err. against the stock output.",
        "",
        "| module | N | samples | variant | ms | rel. err. | status | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        notes = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.notes.items())
        err = "—" if r.rel_err is None else f"{r.rel_err:.1e}"
        lines.append(
            f"| {r.module} | {r.n} | {r.n_sample} | {r.variant} | {fmt(r.ms)} | {err} | {r.status} | {notes} |"
        )
    return "\n".join(lines) + "\n"
