"""Host block benchmark: one real-size Pairformer block of each host (Protenix ``PairformerBlock``,
Boltz-2 ``PairformerLayer`` v2, OpenFold3 ``PairFormerBlock``), inference, stock against patched
(exact and lowrank), the host running with its own kernel switches.

Each block is built at its host's default trunk widths (c_s 384, c_z 128, 16 single heads, 4
triangle heads × 32; Protenix v2: c_z 256 with ``hidden_scale_up``), with random non-zero weights
(the hosts zero-initialise output projections), in eval mode, run the way the host runs its
trunk in bf16: fp32 parameters under ``torch.autocast(bfloat16)``, and on CUDA bf16 single and
pair representations (``rep_dtype: auto``), as inside a Protenix prediction, whose trunk carries
z in bf16 after its first cuEquivariance triangle multiplication (benchmarks/session4/call1).
5 % of the tokens are padding.

Each host's block builder and kernel switches are in its ``hosts/<host>/presets.py``
(``build_block``, ``BLOCK_KERNELS``). Kernel switches, per host (``kernels=`` in the config):
``default`` is what the host uses at inference — Protenix's ``triangle_attention="cuequivariance"`` / ``triangle_multiplicative=
"cuequivariance"``, Boltz-2's ``use_kernels=True`` (cuEquivariance), OpenFold3's
``use_triton_triangle_kernels=True``; where that kernel package is not installed, the case is
recorded as not installed and the next available switch (Protenix: its own ``triattention``
Triton kernel, then torch) is timed too. The patched block keeps the same switches, so only
the attention modules differ.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..cli import Setting, atomic_write, check_divisible, check_names, check_settings, positive_ints
from ..hosts import host_module
from ..hosts.presets import randomise_
from .timing import environment, failure_status, median_ms, resolve_device

os.environ.setdefault("LAYERNORM_TYPE", "torch")  # Protenix's fused layer norm needs nvcc at import


@dataclass
class BlockRecord:
    host: str
    n: int
    variant: str  # "stock", "exact", "lowrank"
    kernels: str  # the host's kernel switches used
    rank: int | None = None
    ms: float | None = None
    peak_memory_bytes: int | None = None
    status: str = "ok"
    notes: dict = field(default_factory=dict)


def _masks(n: int, device):
    token = torch.ones(1, n, device=device)
    token[:, n - max(1, n // 20) :] = 0
    return token, token[:, :, None] * token[:, None, :]


def build_block(host: str, cfg, width: str = "v1"):
    """(block, call(block, s, z, token_mask, pair_mask, kernel_kwargs)) for one real-size block of
    ``host`` (``hosts/<host>/presets.build_block``), with random non-zero weights, in eval mode."""
    block, call = host_module(host, "presets").build_block(cfg, width)
    return randomise_(block, cfg.seed, spread=0.1).eval(), call


# the s / z dtype fed to the block (None: bf16 on CUDA, as in a prediction's trunk; fp32 on CPU)
REP_DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}


def _measure(host, n, variant, kernels, cfg, device, width="v1") -> BlockRecord:
    import pairformer_fb as fb

    rec = BlockRecord(host, n, variant, kernels, cfg.rank if variant == "lowrank" else None)
    try:
        block, call = build_block(host, cfg, width)
        block = block.to(device)
        if variant != "stock":
            report = fb.patch_model(block, host=host, mode=variant, rank=cfg.rank)
            rec.notes["patched"] = len(report)
        g = torch.Generator().manual_seed(cfg.seed)
        c_z = 256 if width == "v2" else cfg.c_z
        rep_dtype = REP_DTYPES[cfg.get("rep_dtype", "auto")] or (
            torch.bfloat16 if device.type == "cuda" else torch.float32
        )
        s = torch.randn(1, n, cfg.c_s, generator=g).to(device, rep_dtype)
        z = torch.randn(1, n, n, c_z, generator=g).to(device, rep_dtype)
        token, pair = _masks(n, device)
        kw = {
            **host_module(host, "presets").BLOCK_KERNELS[kernels],
            **dict(cfg.get("forward_kwargs", {}).get(host) or {}),
        }

        def fn():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                return call(block, s, z, token, pair, kw)

        with torch.inference_mode():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rec.ms = median_ms(fn, device, cfg.warmup_ms, cfg.rep_ms)
            if device.type == "cuda":
                rec.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
    except Exception as e:  # record why and go on
        rec.status = failure_status(e)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rec


HOSTS = ("protenix", "boltz", "openfold3")
VARIANTS = ("stock", "exact", "lowrank")
# checked before any work: (dotted key, kind, least value)
SETTINGS: tuple[Setting, ...] = (
    ("rank", "int", 1),
    ("c_s", "int", 1),
    ("c_z", "int", 1),
    ("single_heads", "int", 1),
    ("tri_heads", "int", 1),
    ("tri_head_dim", "int", 1),
    ("protenix_v2", "bool", None),
)


def run(cfg) -> list[BlockRecord]:
    check_names(cfg.hosts, "hosts", HOSTS)
    check_names(cfg.variants, "variants", VARIANTS)
    check_settings(cfg, SETTINGS)
    check_divisible(cfg, "c_s", "single_heads")
    if cfg.get("rep_dtype", "auto") not in REP_DTYPES:
        raise ValueError(f"rep_dtype must be auto, bf16 or fp32, got {cfg.rep_dtype!r}")
    device = resolve_device(cfg.device)
    sizes = {host: positive_ints(cfg.sizes[host], f"sizes.{host}") for host in cfg.hosts}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device) | {
        "dtype": "bf16 autocast" if device.type == "cuda" else "fp32",
        "rep_dtype": cfg.get("rep_dtype", "auto"),
    }
    for pkg in ("protenix", "boltz", "openfold3", "cuequivariance_torch"):
        try:
            import importlib.metadata as md

            env[pkg] = md.version(pkg.replace("_", "-"))
        except Exception:  # noqa: BLE001
            env[pkg] = None
    jobs = []
    for host in cfg.hosts:
        kernel_list = list(cfg.kernels[host]) if device.type == "cuda" else ["torch"]
        for n in sizes[host]:
            for kernels in kernel_list:
                for variant in cfg.variants:
                    jobs.append((host, n, variant, kernels, "v1"))
            if host == "protenix" and cfg.protenix_v2:
                jobs += [(host, n, v, kernel_list[0], "v2") for v in cfg.variants]
    records = []
    for host, n, variant, kernels, width in tqdm(jobs, desc="block benchmark", unit="case"):
        rec = _measure(host, n, variant, kernels, cfg, device, width)
        if width == "v2":
            rec.notes["width"] = "v2 (c_z 256, 8 triangle heads)"
        records.append(rec)
        atomic_write(
            out / "results.json", json.dumps({"environment": env, "records": [asdict(r) for r in records]}, indent=1)
        )
        atomic_write(out / "results.md", markdown_table(records, env))
    return records


def markdown_table(records: list[BlockRecord], env: dict) -> str:
    stock = {(r.host, r.n, r.kernels, r.notes.get("width")): r.ms for r in records if r.variant == "stock" and r.ms}
    lines = [
        "# Host block benchmark",
        "",
        " · ".join(f"{k}: {v}" for k, v in env.items()),
        "",
        "One Pairformer block, inference, median ms; speed-up against the stock block with the same kernel switches.",
        "",
        "| host | width | N | kernels | variant | rank | ms | × stock | peak GiB | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        base = stock.get((r.host, r.n, r.kernels, r.notes.get("width")))
        speed = f"{base / r.ms:.2f}" if (base and r.ms) else "—"
        mem = f"{r.peak_memory_bytes / 2**30:.2f}" if r.peak_memory_bytes else "—"
        ms = f"{r.ms:.2f}" if r.ms else "—"
        lines.append(
            f"| {r.host} | {r.notes.get('width', 'v1')} | {r.n} | {r.kernels} | {r.variant} | "
            f"{r.rank or ''} | {ms} | {speed} | {mem} | {r.status} |"
        )
    return "\n".join(lines) + "\n"
