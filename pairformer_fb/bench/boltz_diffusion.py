"""Boltz-2 diffusion-module attention benchmark: one call of the stock Boltz-2
``AttentionPairBias`` (compute_pair_bias=False, as in every ``DiffusionTransformerLayer``)
against ours (``FlashBiasPrecomputedBiasAttention`` through the Boltz adapter), i.e. the time per
layer per diffusion step. The records and the table are those of :mod:`.bench_diffusion`.

Modules:

* ``diffusion``: the token transformer's attention (Boltz-2: 24 layers, 16 heads x 48, dim 768),
  ``n_sample`` samples per call (``multiplicity``), the layer's bias a strided slice of the
  all-layer bias [1, N, N, bias_layers * heads] as the host hands it;
* ``atom``: the atom transformer's windowed attention (4 heads, dim 128, windows of 32 queries
  against 128 keys) over N atoms, the bias already repeated over the samples by the host.

Variants: ``stock``; ``exact`` (the bias cached as across diffusion steps); ``exact_uncached``
(recomputed every call); ``lowrank`` (SVD factors, cached; diffusion only; the SVD's one-off time,
rank and error in the notes). Boltz-2 runs its diffusion module in fp32 with
``torch.set_float32_matmul_precision("highest")`` (autocast off): the defaults here.
"""

from __future__ import annotations

from functools import partial

import torch

from ..cli import Setting, check_divisible, check_settings
from .diffusion import MODULES, DiffusionRecord, run_cases, time_variant
from .timing import Skipped, failure_status


def _host_module(module: str, cfg, device):
    from boltz.model.layers.attentionv2 import AttentionPairBias

    from ..hosts.presets import randomise_

    spec = cfg[module]
    host = AttentionPairBias(c_s=spec.dim, num_heads=spec.heads, compute_pair_bias=False)
    return randomise_(host, cfg.seed).to(device).eval()  # hosts zero-init proj_o: random weights


def _inputs(module: str, n: int, cfg, device) -> dict:
    g = torch.Generator().manual_seed(cfg.seed + 1)
    spec, m = cfg[module], cfg.n_sample
    if module == "diffusion":
        s = torch.randn(m, n, spec.dim, generator=g)
        all_bias = torch.randn(1, n, n, spec.bias_layers * spec.heads, generator=g)
        bias = all_bias.to(device).view(1, n, n, spec.bias_layers, spec.heads)[:, :, :, 0]
        mask = torch.ones(m, n)
        return {"s": s.to(device), "k_in": None, "bias": bias, "mask": mask.to(device), "multiplicity": m}
    from boltz.model.modules.encodersv2 import get_indexing_matrix, single_to_keys

    W, H = spec.n_queries, spec.n_keys
    K = -(-n // W)
    atoms = torch.randn(m, K * W, spec.dim, generator=g).to(device)
    atom_mask = torch.zeros(m, K * W)
    atom_mask[:, :n] = 1
    to_keys = partial(single_to_keys, indexing_matrix=get_indexing_matrix(K, W, H, device), W=W, H=H)
    s = atoms.view(m * K, W, spec.dim)
    k_in = to_keys(atoms).view(m * K, H, spec.dim)
    mask = to_keys(atom_mask.to(device).unsqueeze(-1)).view(m * K, H)
    bias = torch.randn(m * K, W, H, spec.heads, generator=g).to(device)
    return {"s": s, "k_in": k_in, "bias": bias, "mask": mask, "multiplicity": 1}


def _call(fn_module, x):
    k_in = x["s"] if x["k_in"] is None else x["k_in"]
    return lambda: fn_module(x["s"], x["bias"], x["mask"], k_in, multiplicity=x["multiplicity"])


def _ours(host, module: str, mode: str, cfg):
    from ..hosts.base import Site
    from ..hosts.boltz.adapter import make_replacement
    from ..modules.bias_cache import SVDConfig

    site = Site(path=module, parent=None, attr=module, module=host, kind=module, node=None, stack="diffusion", block=0)
    svd = SVDConfig(rel_error=cfg.svd.rel_error, max_rank=cfg.svd.max_rank)
    return make_replacement(site, mode=mode, factor_config=None, svd_config=svd)


def _measure(module, n, variant, cfg, dtype, device, host, x, stock_out) -> DiffusionRecord:
    rec = DiffusionRecord(module, n, cfg.n_sample, variant)
    try:
        if variant == "lowrank" and module != "diffusion":
            raise Skipped("lowrank applies to the token transformer's attention only")

        def build_ours(mode):
            ours = _ours(host, module, mode, cfg)
            return ours, _call(ours, x)

        time_variant(
            rec, variant, _call(host, x), build_ours, cfg, dtype, device, stock_out, cache_hits=module == "diffusion"
        )
    except Exception as e:  # noqa: BLE001 - keep going: record why this variant failed
        rec.status = failure_status(e)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rec


VARIANTS = ("stock", "exact", "exact_uncached", "lowrank")
# the shapes, checked before any work: (dotted key, kind, least value)
SETTINGS: tuple[Setting, ...] = (
    ("n_sample", "int", 1),
    ("svd.rel_error", "number", 0),
    ("svd.max_rank", "int", 1),
    *((f"{m}.{k}", "int", 1) for m in MODULES for k in ("dim", "heads")),
    ("diffusion.bias_layers", "int", 1),
    ("atom.n_queries", "int", 1),
    ("atom.n_keys", "int", 1),
)


def run(cfg) -> list[DiffusionRecord]:
    check_settings(cfg, SETTINGS)
    for m in MODULES:
        check_divisible(cfg, f"{m}.dim", f"{m}.heads")

    def setup(module, n, device):
        host = _host_module(module, cfg, device)
        x = _inputs(module, n, cfg, device)
        return host, x, _call(host, x)

    return run_cases(cfg, "Boltz-2 diffusion attention benchmark", {"host": "boltz"}, setup, _measure, VARIANTS)
