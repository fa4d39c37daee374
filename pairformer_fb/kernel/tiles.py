"""Tile configurations of the FlashBias Triton kernels (``triton_kernels``): the defaults per
kernel kind, the tuned overrides, the shrink-and-retry of a launch that runs out of shared
memory, and the program order of the forward / backward grids."""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from triton.runtime.errors import OutOfResources

from .op import pow2_at_least_16

if TYPE_CHECKING:
    from .triton_launch import _Operands

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    rows: int = 2  # rows per program where they share the bias / factor tiles (else 1): 1, 2 or 4
    splits: int = 1  # ds_sum: programs per tile of a row-shared sum, each adding its share of the rows
    fuse_ds: bool = False  # bwd: add the program's rows' dS atomically to the row-shared sum (no ds_sum kernel)


# the padded tile width of a head dim or rank (shared with the op's dispatch)
_pow2_at_least_16 = pow2_at_least_16


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the launches' grid sizes: plain integer math (``triton.cdiv`` is a
    constexpr function whose call from Python costs a few microseconds, 11 times per op
    forward + backward; benchmarks/session9/host_overhead_cpu/)."""
    return -(-a // b)


def default_config(kind: str, block_d: int, block_r: int, has_bias: bool, elem_bytes: int = 2) -> KernelConfig:
    """Tiles per kernel kind ("fwd", "bwd", "ds_sum"), padded head width, padded rank (0 without
    factors), whether a dense bias tile is read, and the operands' element size (2: fp16 / bf16,
    4: fp32).

    Every entry fits the 227 KiB of shared memory of a Hopper SM as it is, so a first call
    compiles each kernel once: a launch that runs out of shared memory recompiles with smaller
    tiles (``_shrink``), and each such compile of a spilling fp32 kernel took 5-150 s
    (benchmarks/session5/cpu_compile_probe/). ``tests/test_kernel_compile.py`` compiles the
    largest case of each branch for sm_90 and checks this without a GPU."""
    if INTERPRET:  # the CPU interpreter: small tiles keep tests fast and still cover several blocks
        return KernelConfig(16, 16, 1, 1)
    width = block_d + block_r
    if elem_bytes == 4:
        # fp32 tiles take twice the bytes (shared memory, registers) of 16-bit ones: one row per
        # program, two stages, narrower tiles as the head dim + rank grows. The forward at
        # width <= 64 is the tiles Protenix's fp32 diffusion attention (D = 48, dense bias) ran
        # with after shrinking at launch (benchmarks/session3/run3). The backward adds each
        # row's dS to the row-shared sum itself (no separate ds_sum kernel to compile).
        if kind == "fwd":
            return KernelConfig(64, 64, 4, 2, 1) if width <= 64 else KernelConfig(32, 32, 4, 2, 1)
        if kind == "bwd":
            return KernelConfig(32, 32, 4, 2, 1, fuse_ds=True)
        return KernelConfig(32, 32, 4, 2, 1)
    if width > 128:  # wide tiles: keep shared memory under the 227 KiB of a Hopper SM
        return KernelConfig(64, 32, 4, 2, 1) if kind == "fwd" else KernelConfig(32, 64, 4, 2, 1, fuse_ds=True)
    # measured best at N = 1024, D = 32 on an H200 (benchmarks/kernel_tuning.md)
    if kind == "ds_sum":
        # a dense bias: 4 programs per tile (N = 1024: 4096 programs, not 1024) measured 12.46 against
        # 12.9 ms forward+backward; the shared factors alone gain nothing from splitting
        return KernelConfig(128, 64, 4, 3, 1) if (block_r and not has_bias) else KernelConfig(64, 64, 4, 3, 1, 4)
    if kind == "bwd":
        if has_bias or block_r:
            # two rows per program, their dS summed into the row-shared sum by atomic adds: dense
            # bias 12.13 / factors R = 32 11.85 ms fwd+bwd at N = 1024 against 12.45 / 12.52 with
            # the separate _ds_sum_kernel (H200, benchmarks/session3/run1/bwd.txt). From width 128
            # (D = 128, or D + R past 64) two rows' tiles need more than 227 KiB: one row.
            # A padded rank above the padded head dim (e.g. D 27 / R 38, D 8 / R 20) at 4 warps made
            # Triton 3.6 read shared memory out of bounds at the dQ product (compute-sanitizer; wrong
            # dQ, dK, dV): 8 warps compute those right (benchmarks/session5/call5/tiles.txt).
            warps = 8 if block_r > block_d else 4
            if block_d > 32 and width < 128:
                # the diffusion transformer's head dim 48 with its bias shared by 5 samples: one row,
                # 32 x 64 tiles (no spills) measured 1.02 ms fwd+bwd against 2.04 with the two-row
                # 64 x 64 tiles (1,144 B of spill stack) at N = 1170 (H100,
                # benchmarks/session9/bwd_profile_h100/, GPU-bound there; shorter N are host-bound).
                # Its factors (R <= 32, with or without the bias) likewise since session 13: the two-row
                # tiles compile to 255 registers, 344-432 B of spill stack and 183-191 KiB of shared
                # memory, the one-row ones to 172-196 registers, no spills, 69-73 KiB
                # (benchmarks/session13/diffusion_factors_bwd_cpu_compile/; from CUDA graph replays
                # the two-row factors took 3.5-3.9x the floor forward + backward against the dense
                # bias's 2.1-2.4x, benchmarks/session13/attention_graphs_h100/; not yet timed after)
                return KernelConfig(32, 64, 4, 3, 1, fuse_ds=True)
            # two stages (32 / 168 B of spill stack instead of 80 / 304 at N = 1024 / 1170): triangle
            # shape D = 32, dense bias 11.65 against 12.25 ms fwd+bwd at N = 1024, factors R = 32
            # 11.46 against 11.99; at 1170, both with the padded dS sum and the dQ stagger, 22.98 / 21.86
            # against 25.63 / 23.27 (H100, benchmarks/session9/bwd_profile_h100/)
            stages = 2 if width <= 64 and warps == 4 else 3  # the 8-warp tiles: session 5's GPU regression cases
            return KernelConfig(64, 64, warps, stages, 2 if width < 128 else 1, fuse_ds=True)
        return KernelConfig(64, 128, 4, 3, 1)
    # a shared bias or shared factors: two rows per program share their tiles. Factors at N = 1170
    # (triangle module case: strided q/k/v, key mask, gate): 4.98 ms against 6.01 with the
    # (128, 64, 4, 3, 1) tiles chosen at N = 1024 (benchmarks/session3/run2/tri.txt)
    # Head dims 33-64 (the diffusion transformer's 48): one row per program; 0.142 against 0.26 ms
    # with two (bf16, 5 samples, N = 1170, gate fused; benchmarks/session3/run3/dsweep.txt).
    if has_bias or block_r:
        return KernelConfig(64, 64, 4, 3, 2) if block_d <= 32 else KernelConfig(64, 64, 4, 3, 1)
    return KernelConfig(128, 64, 4, 3, 1)


# Tuning sweeps and benchmarks set entries here:
# {(kind, block_d, block_r, has_bias, elem_bytes): KernelConfig}.
CONFIG_OVERRIDES: dict[tuple[str, int, int, bool, int], KernelConfig] = {}


def config_key(
    kind: str, block_d: int, block_r: int, has_bias: bool, elem_bytes: int = 2
) -> tuple[str, int, int, bool, int]:
    return (kind, block_d, block_r, bool(has_bias), int(elem_bytes))


def _ops_config_key(kind: str, ops: "_Operands") -> tuple[str, int, int, bool, int]:
    return config_key(kind, ops.block_d, ops.block_r if ops.has_factors else 0, ops.bias is not None, ops.elem_bytes)


def _config(kind: str, ops: "_Operands") -> KernelConfig:
    key = _ops_config_key(kind, ops)
    return CONFIG_OVERRIDES.get(key) or default_config(*key)


def load_config_overrides(path: str) -> int:
    """Read tuned tiles from a JSON list of {"kind", "block_d", "block_r", "has_bias",
    "block_m", "block_n", "num_warps", "num_stages", "rows", "elem_bytes"} (as written by
    scripts/tune_kernels.py; elem_bytes defaults to 2, the 16-bit dtypes)."""
    import json

    try:
        with open(path) as f:
            entries = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON list of tile entries ({err})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of tile entries, got {type(entries).__name__}")
    for e in entries:
        if e.get("rows", 2) not in (1, 2, 4):
            raise ValueError(f"{path}: {e}: rows must be 1, 2 or 4")
        key = config_key(e["kind"], e["block_d"], e["block_r"], e["has_bias"], e.get("elem_bytes", 2))
        CONFIG_OVERRIDES[key] = KernelConfig(
            e["block_m"],
            e["block_n"],
            e["num_warps"],
            e["num_stages"],
            e.get("rows", 2),
            e.get("splits", 1),
            e.get("fuse_ds", False),
        )
    return len(entries)


def _shrink(cfg: KernelConfig) -> KernelConfig | None:
    """The next smaller tiles after a launch ran out of shared memory (wide head dims in fp32
    need four times the bf16 tiles): one row per program, then fewer pipeline stages, then half
    the key block, then half the query block. None when nothing is left to shrink."""
    if cfg.rows > 1:
        return dataclasses.replace(cfg, rows=1)
    if cfg.num_stages > 1:
        return dataclasses.replace(cfg, num_stages=cfg.num_stages - 1)
    if cfg.block_n > 16:
        return dataclasses.replace(cfg, block_n=cfg.block_n // 2)
    if cfg.block_m > 16:
        return dataclasses.replace(cfg, block_m=cfg.block_m // 2)
    return None


# (kind, block_d, block_r, has_bias, dtype) -> the tiles that fit after a launch had to shrink
_FITTED: dict[tuple, KernelConfig] = {}


def _launch(kind: str, ops: "_Operands", dtype: torch.dtype, launch) -> None:
    """``launch(cfg)`` with the configured tiles, shrunk (see ``_shrink``) while Triton reports
    that they need more shared memory than the device has; the tiles that fit are remembered.
    The error is raised at launch, before the kernel runs, so a retry starts from clean buffers."""
    key = (*_ops_config_key(kind, ops), dtype)
    cfg = _FITTED.get(key) or _config(kind, ops)
    while True:
        try:
            return launch(cfg)
        except OutOfResources:
            smaller = _shrink(cfg)
            if smaller is None:
                raise
            if key not in _FITTED:  # once per kernel class: each retry is another compile
                warnings.warn(
                    f"FlashBias {kind} tiles {cfg} need more shared memory than this GPU has; "
                    f"compiling smaller ones (a slower first call)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            cfg = _FITTED[key] = smaller


# On by default (issue 17): the fused backward (fuse_ds) adds the row-shared dS into fp32
# storage padded to whole BIAS_TILE_PAD tiles (triton_launch._reduced_ds_buffer) and its atomic
# adds go unmasked. Where Lk is not a multiple of 16 (N = 1170) the bounds-masked adds into rows
# of ceil(Lk / 4) * 4 floats compile to 32 scalar REDG.E.ADD.F32 per thread and 64 x 64 tile,
# against 8 four-wide REDG.E.ADD.F32x4 at N = 1024 (benchmarks/session6/bwd_analysis.md);
# padded, every length gets the four-wide ones. Measured (H100, triangle shape, old tiles,
# benchmarks/session9/bwd_profile_h100/): N = 1170 dense bias 30.48 -> 23.82 ms fwd+bwd,
# factors 26.38 -> 22.84; N = 1024 12.29 -> 12.17 and 11.96 -> 11.54.
# PFB_DS_TILE_PAD=0 (or setting this attribute) turns it off; read at each backward call.
DS_TILE_PAD = os.environ.get("PFB_DS_TILE_PAD", "1") != "0"
# Opt-in, measured slower (issue 17): the backward programs of one row group (all key blocks and
# heads, side by side in the heads-fastest grid) start their query-block loop at different
# blocks, so the key blocks of a head no longer add into the same dQ tile at the same time
# (by default only row groups are staggered). Only the order of the dQ / dS sums changes.
# H100, triangle shape: N = 1024 12.29 -> 13.04 ms fwd+bwd, N = 1170 with the padded dS sum
# 23.82 -> 25.60 (benchmarks/session9/bwd_profile_h100/): kept for measurements only.
# PFB_DQ_STAGGER=1 (or setting this attribute) turns it on; read at each backward call.
DQ_STAGGER = os.environ.get("PFB_DQ_STAGGER", "0") == "1"
# On by default (issue 17): the backward's atomic adds of dQ tiles ("dq") and of the fused
# row-shared dS sum's tiles ("ds") go through the copy engine's bulk tensor reduce-add (TMA,
# cp.reduce.async.bulk.tensor, as FlashAttention-3's dQ) instead of per-thread vector atomics:
# one instruction per tile, issued asynchronously. CUDA devices of compute capability 9 and later
# only (the interpreter has no tensor descriptors); elsewhere, and for an accumulator the copy
# engine cannot address, the atomics stay. Only the order of the fp32 sums changes. Measured
# (H100, triangle shape, dense bias, benchmarks/session11/bwd_tma_h100/): the backward kernel
# 8.29 -> 7.75 ms at N = 1024 and 15.56 -> 13.33 ms at N = 1170 (fwd+bwd 1.28x -> 1.23x and
# 1.33x -> 1.19x the SDPA floor); factors R = 32 likewise. PFB_TMA_REDUCE=0 (or "") turns it
# off, =dq or =ds keeps one (or set this attribute to a set of those); read at each backward call.
TMA_REDUCE = frozenset(x for x in os.environ.get("PFB_TMA_REDUCE", "dq,ds").split(",") if x and x != "0")
# ... from this many scores per backward (B H Lq Lk) on: below it the bulk reduce-adds' tensor
# descriptors, encoded by Triton's launcher at every launch, cost more host time than the copy engine
# saves GPU time. The triangle at N = 256 (67 M scores), host-bound in eager mode, took 1052 us
# forward + backward with them against 843 without (do_bench; host time 954 against 840 us; H100,
# benchmarks/session13/host_profile_h100/); at N = 1024 (4.3 G) they saved 0.54 ms of the backward
# kernel's 8.29. 2^28 sits between the triangle at 384 (226 M, host-bound: 1.97x the floor eager
# against 1.11x from CUDA graphs) and at 512 (537 M, 1.14x eager and 1.13x from graphs); the
# crossover itself is not measured (benchmarks/scripts/session14/ab.sh tma times it). The
# rule is the same inside a CUDA graph (whose replays skip the host), so its capture compiles no
# kernel its eager warm-up did not; there the small shapes forgo the copy engine's GPU-side gain:
# from CUDA graph replays, 2.5-5 % of forward + backward at the triangle 256 / 384 and the single
# attention 384, none at the diffusion shape 384 (H100, benchmarks/session16/tma_graphs_ab_h100/).
# The threshold is for eager mode, where the backward runs in fine-tuning.
# PFB_TMA_REDUCE_MIN_SCORES=0 uses them at every size; read at each backward call.
_TMA_MIN_ENV = os.environ.get("PFB_TMA_REDUCE_MIN_SCORES") or None  # empty: unset
_TMA_MIN_ENV_OK = _TMA_MIN_ENV is None or _TMA_MIN_ENV.isdigit()
TMA_REDUCE_MIN_SCORES = int(_TMA_MIN_ENV) if _TMA_MIN_ENV is not None and _TMA_MIN_ENV_OK else 2**28


def check_env_settings() -> None:
    """A ValueError naming PFB_TMA_REDUCE for kinds other than dq, ds, PFB_TMA_REDUCE_MIN_SCORES
    for anything but a non-negative integer, and the program-order
    variables (PFB_GRID_ORDER, PFB_GRID_ORDER_FWD / _BWD, PFB_GRID_GROUP) for values they do not
    take (checked when the op is called, before any work: a typo must not change the kernels
    silently, nor reach a user as an import traceback)."""
    if not TMA_REDUCE <= {"dq", "ds"}:
        raise ValueError(
            f"PFB_TMA_REDUCE (tiles.TMA_REDUCE): expected 0 or a comma-separated subset of dq, ds; got {sorted(TMA_REDUCE)}"
        )
    if not _TMA_MIN_ENV_OK:
        raise ValueError(
            f"PFB_TMA_REDUCE_MIN_SCORES: expected a non-negative integer (scores per backward); got {_TMA_MIN_ENV!r}"
        )
    if _GRID_ENV_ERROR is not None:
        raise ValueError(_GRID_ENV_ERROR)


# program order of the forward / backward grids (see _program_rows). Heads fastest measured
# 4.38 / 4.47 ms for the starting / ending triangle module at N = 1024 against 4.42 / 4.52 (H200,
# same run; the contiguous standalone op 2.68 against 2.64: both within ~1.5 % noise).
# PFB_GRID_HEAD_FASTEST=0|1 overrides it for measurements.
GRID_HEAD_FASTEST = os.environ.get("PFB_GRID_HEAD_FASTEST", "1") == "1"
# at most this many row groups sharing a bias / factor tile run side by side (GRID_ORDER 2): the
# diffusion transformer's samples; PFB_GRID_ORDER=0|1|2|3 forces an order for measurements, and
# PFB_GRID_ORDER_FWD / PFB_GRID_ORDER_BWD one kernel's (the backward's also serves _ds_sum_kernel)
SIDE_BY_SIDE_GROUPS = 8
# (kept as given: check_env_settings names a bad value when the op is called, not at import)
_FORCED_GRID_ORDER = os.environ.get("PFB_GRID_ORDER")
_FORCED_GRID_ORDER_OF = {kind: os.environ.get(f"PFB_GRID_ORDER_{kind.upper()}") for kind in ("fwd", "bwd")}
# GRID_ORDER 3: row groups per chunk (see triton_kernels._program_rows); PFB_GRID_GROUP for measurements
_GRID_GROUP_ENV = os.environ.get("PFB_GRID_GROUP")
_GRID_GROUP_ENV_OK = _GRID_GROUP_ENV is None or (_GRID_GROUP_ENV.isdigit() and int(_GRID_GROUP_ENV) > 0)
GRID_GROUP = int(_GRID_GROUP_ENV) if _GRID_GROUP_ENV is not None and _GRID_GROUP_ENV_OK else 8


def _grid_env_error() -> str | None:
    """What is wrong with the program-order variables as read at import (None: nothing), found
    once here and raised by check_env_settings at each call."""
    orders = {"PFB_GRID_ORDER": _FORCED_GRID_ORDER} | {
        f"PFB_GRID_ORDER_{kind.upper()}": value for kind, value in _FORCED_GRID_ORDER_OF.items()
    }
    for name, value in orders.items():
        if value is not None and value not in ("0", "1", "2", "3"):
            return f"{name}: expected a program order 0, 1, 2 or 3; got {value!r}"
    if not _GRID_GROUP_ENV_OK:
        return f"PFB_GRID_GROUP: expected a positive integer (row groups per chunk); got {_GRID_GROUP_ENV!r}"
    return None


_GRID_ENV_ERROR = _grid_env_error()
# GRID_ORDER 3 is the order where a row-shared operand that every row group sweeps outgrows the
# GPU's L2: the backward's fp32 dS sum (shared bias or factors) past this share of L2, the
# forward's dense bias past that one. Measured on an H100 (50 MB L2; triangle shape, alternating
# runs, benchmarks/session13/grid_order_h100/): forward + backward with the backward in order 3
# (8 row groups per chunk) at N = 2048 93.5-94.4 -> 89.1-89.5 ms (dense bias; dS 64 MB), 88.4 ->
# 84.5 (factors), at 1536 (dS 38 MB) 38.3-41.2 -> 37.5 and 38.2-39.1 -> 36.5; but at 1024
# (16 MB) 10.96 -> 11.50 and at 1170 (22 MB) 18.47 -> 18.65. The forward in order 3 (dense
# bias): 20.95 -> 20.13 at 2048 (bias 32 MB), 8.44 -> 8.6 at 1536 (19 MB), 2.55 -> 2.61 at 1024.
BWD_ORDER3_L2_SHARE = 0.6
FWD_ORDER3_L2_SHARE = 0.5


@functools.cache
def _cuda_properties_of(index: int):
    return torch.cuda.get_device_properties(index)


def cuda_properties(device: torch.device):
    """torch's properties of a CUDA device (compute capability, L2 size, ...), asked once per
    device (the op's host time); ``cuda`` without an index is the current device."""
    return _cuda_properties_of(device.index if device.index is not None else torch.cuda.current_device())


def _outgrows_l2(ops: "_Operands", kind: str, sums_ds: bool) -> bool:
    """Whether the row-shared operand a ``kind`` kernel sweeps once per row group (the
    forward's dense bias; the backward's fp32 dS sum when it adds into one, ``sums_ds``) is a
    larger share of the device's L2 than GRID_ORDER 3 pays off at (see BWD_ORDER3_L2_SHARE)."""
    if INTERPRET or ops.device.type != "cuda":
        return False
    if kind == "fwd":
        if ops.bias is None or ops.bias_shape[0] != 1:
            return False
        swept, share = ops.bias_shape[1] * ops.Lq * ops.Lk * ops.elem_bytes, FWD_ORDER3_L2_SHARE
    else:
        if not sums_ds:
            return False
        # the sum keeps the heads where the shared factors or the bias have them (as
        # triton_launch._reduced_ds_buffer)
        shared_factors = ops.has_factors and ops.q_factors_batch == 1
        heads = ops.H if shared_factors or (ops.bias is not None and ops.bias_shape[1] == ops.H) else 1
        swept, share = heads * ops.Lq * ops.Lk * 4, BWD_ORDER3_L2_SHARE
    return swept > share * getattr(cuda_properties(ops.device), "L2_cache_size", 0)


def _grid_order(ops: "_Operands", rows: int, kind: str = "fwd", sums_ds: bool = False) -> int:
    """The program order (triton_kernels._program_rows) of a ``kind`` launch ("fwd" or "bwd")
    with ``rows`` rows per program; ``sums_ds``: the backward adds into a row-shared dS sum."""
    forced = _FORCED_GRID_ORDER_OF.get(kind) or _FORCED_GRID_ORDER
    if forced is not None:
        return int(forced)
    shared = ops.bias is not None and ops.bias_shape[0] == 1 or ops.has_factors and ops.q_factors_batch == 1
    if shared and 1 < cdiv(ops.B, rows) <= SIDE_BY_SIDE_GROUPS:
        return 2
    if shared and cdiv(ops.B, rows) > GRID_GROUP and _outgrows_l2(ops, kind, sums_ds):
        return 3
    return 1 if GRID_HEAD_FASTEST else 0


def _rows_per_program(ops: "_Operands", cfg: KernelConfig) -> int:
    """``cfg.rows`` rows per program where they share every bias / factor tile (read once for
    all), as many as there are rows (4 -> 2 for two or three rows); else 1."""
    if cfg.rows not in (1, 2, 4):
        raise ValueError(f"tile config rows={cfg.rows}: a program serves 1, 2 or 4 rows")
    shared = (not ops.has_factors or ops.q_factors_batch == 1) and (ops.bias is None or ops.bias_shape[0] == 1)
    if cfg.rows == 1 or ops.B == 1 or not shared or not (ops.has_factors or ops.bias is not None):
        return 1
    return cfg.rows if ops.B >= cfg.rows else 2
